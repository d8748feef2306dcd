"""The siyi-sdk test suite: real loopback sockets, aiohttp server and clients."""
