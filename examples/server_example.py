import asyncio
import logging

from siyi_sdk import Connection as ServerConnection
from siyi_sdk import Event, ProtocolServer, Request, Response

# 配置基本日志
logging.basicConfig(level=logging.INFO)

# 1. 初始化服务器
server = ProtocolServer(host="127.0.0.1", port=8765, heartbeat_interval=30)

# 2. 定义请求处理器
async def handle_request(connection: ServerConnection, request: Request) -> Response:
    """处理来自客户端的请求"""
    logging.info(f"<- 收到来自 {connection.remote_address} 的请求: {request.command}")
    if request.command == "echo":
        # 模拟处理并回显参数
        await asyncio.sleep(0.1)
        return Response.success(request.id, data=request.params)
    return Response.fail(request.id, "未知的命令")

# 3. 定义事件处理器
async def handle_event(connection: ServerConnection, event: Event) -> None:
    """处理来自客户端的事件"""
    logging.info(f"<- 收到来自 {connection.remote_address} 的事件: {event.name}")
    if event.name == "player_update":
        # 向其他客户端广播玩家更新通知
        await server.broadcast_event(
            name="player_updated_notification",
            data=event.data,
            exclude={connection} # 排除事件发送者
        )

# 4. 定义连接和断开处理器
async def on_client_connect(connection: ServerConnection) -> None:
    """处理新客户端连接"""
    logging.info(f"-> 客户端已连接: {connection.remote_address}")
    # 当客户端连接时，向其请求状态
    try:
        logging.info(f"-> 正在向 {connection.remote_address} 发送 'get_status' 请求")
        response = await server.send_request(connection, "get_status")
        if response.status == "ok":
            logging.info(f"<- 客户端 {connection.remote_address} 的状态: {response.data}")
        else:
            logging.warning(f"<- 客户端 {connection.remote_address} 返回错误: {response.error}")
    except asyncio.TimeoutError:
        logging.warning(f"向 {connection.remote_address} 的请求超时。")
    except Exception as e:
        logging.error(f"向客户端发送请求时出错: {e}")


async def on_client_disconnect(connection: ServerConnection) -> None:
    """处理客户端断开连接"""
    logging.info(f"-> 客户端已断开: {connection.remote_address}")

# 5. 注册处理器
server.on_request(handle_request)
server.on_event(handle_event)
server.on_connect(on_client_connect)
server.on_disconnect(on_client_disconnect)

# 6. 启动服务器
async def main():
    logging.info("正在启动服务器...")
    try:
        await server.start()
    except asyncio.CancelledError:
        logging.info("服务器正在关闭。")
    finally:
        await server.stop()

if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        logging.info("服务器已被用户停止。")
