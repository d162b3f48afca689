"""The ZMQ <-> WebSocket bridge: one set of ZMQ sockets per kernel, shared by its clients."""
