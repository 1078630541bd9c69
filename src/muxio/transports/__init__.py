"""One module per transport kind: stream sockets, datagrams, pipes, subprocesses.

Transports use only the public loop API (plus the loop's own fast paths where
they take them), so this package sits below `muxio.loop`, which imports it.
"""
