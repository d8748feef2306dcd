import asyncio
import logging

from siyi_sdk import Event, ProtocolClient, Request, Response

# 配置基本日志
logging.basicConfig(level=logging.INFO)

# 1. 为服务器发送的请求定义处理器
async def handle_server_request(request: Request) -> Response:
    """处理来自服务器的请求"""
    logging.info(f"<- 收到来自服务器的请求: {request.command}")
    if request.command == "get_status":
        return Response.success(request.id, data={"status": "running", "players": 5})
    return Response.fail(request.id, "未知的服务器命令")

# 2. 为服务器发送的事件定义处理器
async def handle_server_event(event: Event) -> None:
    """处理来自服务器的事件"""
    logging.info(f"<- 收到来自服务器的事件: {event.name} -> {event.data}")


async def main():
    # 3. 使用客户端作为异步上下文管理器以自动处理连接和断开
    client = ProtocolClient(url="ws://127.0.0.1:8765", request_timeout=10)
    
    # 注册处理器
    client.on_request(handle_server_request)
    client.on_event(handle_server_event)

    async with client:
        if not client.is_connected:
            logging.error("连接服务器失败，正在退出。")
            return

        logging.info("已成功连接到服务器。")

        # 4. 向服务器发送请求
        try:
            logging.info("-> 正在向服务器发送 'echo' 请求...")
            response = await client.send_request("echo", {"message": "Hello, World!"})
            if response.status == "ok":
                logging.info(f"<- 收到 echo 响应: {response.data}")
            else:
                logging.warning(f"<- Echo 请求失败: {response.error}")
        except asyncio.TimeoutError:
            logging.warning("Echo 请求超时。")
        except Exception as e:
            logging.error(f"发送请求时发生错误: {e}")

        await asyncio.sleep(1)

        # 5. 向服务器发送事件
        try:
            logging.info("-> 正在向服务器发送 'player_update' 事件...")
            await client.send_event("player_update", {"player": "Steve", "health": 95})
            logging.info("事件已发送。")
        except Exception as e:
            logging.error(f"发送事件时发生错误: {e}")

        # 保持运行以接收服务器消息
        logging.info("客户端正在运行。按 Ctrl+C 停止。")
        await asyncio.sleep(30)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        logging.info("客户端已被用户停止。")
    except ConnectionRefusedError:
        logging.error("连接被拒绝。服务器是否正在运行？")

