"""``siyi codegen``: a typed client generated from the running demo server, then used.

The CLI runs as a subprocess against a real server on loopback; the module it writes is
imported from a temporary directory and every command is called over WebSocket and over HTTP;
mypy --strict and ruff run on it as a user would run them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from siyi_sdk import ApiError, HttpAdapter, ProtocolServer, WebSocketAdapter
from siyi_sdk.adapters import Adapter
from siyi_sdk.demo import GameState, create_game_server
from tests.test_cli import running, siyi

WAIT = 10.0

USAGE = """\
from siyi_sdk import HttpAdapter

from game_client import GameClient, GameStatus, GetPlayerList, PlayerJoined, PlayerSeen


async def main() -> None:
    api = GameClient(HttpAdapter("http://127.0.0.1:1"))
    reveal_type(await api.get_player_list(world="nether"))
    reveal_type(await api.get_status())
    reveal_type(await api.save_world())
    reveal_type(api.watch_players(follow=True))
    reveal_type(await api.call(GetPlayerList(world="x")))
    status: GameStatus = await api.get_status()
    players: int = status.players
    async for seen in api.watch_players():
        item: PlayerSeen = seen
    wrong: str = await api.save_world()
    await api.get_player_list(world=3)

    @api.on_event(PlayerJoined)
    async def joined(event: PlayerJoined) -> None:
        name: str = event.player_name
"""


@pytest.fixture
async def demo() -> AsyncIterator[ProtocolServer]:
    state = GameState()
    state.save_seconds = 0.0
    async with create_game_server(port=0, state=state, heartbeat_interval=None) as server:
        yield server


async def codegen(server: ProtocolServer, out: Path, *more: str) -> None:
    url = f"ws://127.0.0.1:{server.port}"
    args = ("codegen", url, "-o", str(out), "--api-name", "GameClient", *more)
    code, stdout, child = await siyi(*args)
    assert code == 0, child.output()
    assert stdout == ""


@contextlib.contextmanager
def imported(path: Path) -> Iterator[ModuleType]:
    """Import the module at `path` (its directory first on the path), forget it afterwards."""
    name = path.stem
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)
        sys.path.remove(str(path.parent))


async def run_tool(*args: str, cwd: Path) -> tuple[int, str]:
    """Run ``python -m <args>`` in `cwd` to its end: the exit code and stdout + stderr."""
    async with running("-m", *args, cwd=cwd) as child:
        code = await child.wait_exit(timeout=120)
        return code, child.output()


async def test_the_generated_client_calls_every_command_over_websocket_and_http(
    demo: ProtocolServer, tmp_path: Path
) -> None:
    out = tmp_path / "game_client.py"
    await codegen(demo, out)
    with imported(out) as client:
        for adapter in (
            WebSocketAdapter(f"ws://127.0.0.1:{demo.port}", request_timeout=WAIT),
            HttpAdapter(f"http://127.0.0.1:{demo.port}", request_timeout=WAIT),
        ):
            async with adapter:
                await exercise(client, adapter)


async def exercise(client: Any, adapter: Adapter) -> None:
    api = client.GameClient(adapter, timeout=WAIT)
    assert await api.echo(message="hi", n=2) == {"message": "hi", "n": 2}
    status = await api.get_status()
    assert isinstance(status, client.GameStatus)
    assert status.status == "running"
    assert isinstance(status.players, int)
    assert await api.get_player_list() == ["Steve", "Alex"]
    assert await api.get_player_list(world="nether") == ["Piglin"]
    saves = await api.save_world(world="nether")
    assert isinstance(saves, int)
    assert saves >= 1
    seen = [item async for item in api.watch_players()]
    assert all(isinstance(item, client.PlayerSeen) for item in seen)
    assert [(s.world, s.player_name) for s in seen] == [
        ("overworld", "Steve"),
        ("overworld", "Alex"),
        ("nether", "Piglin"),
    ]
    # The Command classes work with the generic Api too, and errors are typed.
    assert await api.call(client.GetPlayerList(world="the_end")) == []
    with pytest.raises(ApiError, match="unknown world") as raised:
        await api.get_player_list(world="moon")
    assert raised.value.code == 1004
    # The events the server declared are EventModels with their wire names.
    assert client.PlayerJoined.event_name() == "player_joined"
    joined = client.PlayerJoined(player_name="Herobrine")
    assert joined.world == "overworld"


async def test_generating_twice_gives_identical_bytes_and_ruff_passes(
    demo: ProtocolServer, tmp_path: Path
) -> None:
    first, second = tmp_path / "first" / "game_client.py", tmp_path / "game_client.py"
    first.parent.mkdir()
    await codegen(demo, first)
    await codegen(demo, second)
    assert first.read_bytes() == second.read_bytes()
    assert b"\r\n" not in second.read_bytes()
    # ruff with its own defaults (a user's project has its own configuration), plus more rules.
    for args in (
        ("ruff", "check", "--isolated", "game_client.py"),
        ("ruff", "check", "--isolated", "--extend-select", "W,I,B,UP,SIM,RUF,ASYNC", "."),
        ("ruff", "format", "--isolated", "--check", "game_client.py"),
    ):
        code, output = await run_tool(*args, cwd=tmp_path)
        assert code == 0, output


async def test_mypy_strict_sees_the_right_types(demo: ProtocolServer, tmp_path: Path) -> None:
    await codegen(demo, tmp_path / "game_client.py")
    (tmp_path / "usage.py").write_text(USAGE, encoding="utf-8")
    # Strict, and without the pydantic plugin: what a user without any set-up gets.
    (tmp_path / "mypy.ini").write_text("[mypy]\nstrict = True\n", encoding="utf-8")
    code, output = await run_tool(
        "mypy",
        "--config-file",
        "mypy.ini",
        "--no-incremental",
        "game_client.py",
        "usage.py",
        cwd=tmp_path,
    )
    lines = [line for line in output.splitlines() if line.startswith(("usage.py", "game_client"))]
    revealed = [line.split("Revealed type is ", 1)[1] for line in lines if "Revealed" in line]
    assert revealed == [
        '"list[str]"',
        '"game_client.GameStatus"',
        '"int"',
        '"typing.AsyncIterator[game_client.PlayerSeen]"',
        '"list[str]"',
    ], output
    errors = [line for line in lines if ": error:" in line]
    # Exactly the two lines that are wrong on purpose, and nothing in the generated module.
    assert len(errors) == 2, output
    assert 'variable has type "str"' in errors[0], output
    assert 'incompatible type "int"; expected "str"' in errors[1], output
    assert code == 1, output


async def test_codegen_names_the_extra_when_the_generator_is_missing(
    demo: ProtocolServer, tmp_path: Path
) -> None:
    # The generator is made unimportable in the child, as it is where the extra is not installed.
    script = (
        "import sys; sys.modules['datamodel_code_generator'] = None; "
        "from siyi_sdk.cli import main; "
        f"sys.exit(main(['codegen', 'http://127.0.0.1:{demo.port}', '-o', 'x.py']))"
    )
    async with running("-c", script, cwd=tmp_path) as child:
        code = await child.wait_exit()
    assert code == 2, child.output()
    assert "siyi-sdk[codegen]" in child.text("stderr"), child.output()
    assert not (tmp_path / "x.py").exists()


async def test_codegen_needs_the_key_of_a_server_with_one(tmp_path: Path) -> None:
    async with create_game_server(port=0, verify_key="sesame", heartbeat_interval=None) as server:
        url = f"http://127.0.0.1:{server.port}"
        code, _, child = await siyi("codegen", url, "-o", str(tmp_path / "c.py"))
        assert code == 1, child.output()
        assert "HTTP 401" in child.text("stderr")
        assert not (tmp_path / "c.py").exists()
        code, _, child = await siyi("codegen", url, "-o", str(tmp_path / "c.py"), "--key", "sesame")
        assert code == 0, child.output()
    assert "class GeneratedApi(Api):" in (tmp_path / "c.py").read_text(encoding="utf-8")


async def test_codegen_to_stdout(demo: ProtocolServer) -> None:
    code, stdout, child = await siyi("codegen", f"http://127.0.0.1:{demo.port}")
    assert code == 0, child.output()
    assert "def watch_players(self, *, follow: bool = False) -> AsyncIterator[PlayerSeen]:" in (
        stdout
    )
    compile(stdout, "game_client.py", "exec")
