# TEMPORARY STUB until the net branch is merged
import socket
async def _nyi(*a, **k): raise NotImplementedError
getaddrinfo = getnameinfo = sock_recv = sock_recv_into = sock_recvfrom = sock_recvfrom_into = _nyi
sock_sendall = sock_sendto = sock_connect = sock_accept = sock_sendfile = transport_sendfile = _nyi
async def connect_socket(loop, host, port, **kw):
    s = socket.create_connection((host, port)); s.setblocking(False); return s
async def unix_connect_socket(loop, path):
    s = socket.socket(socket.AF_UNIX); s.connect(path); s.setblocking(False); return s
async def bind_server_sockets(loop, host, port, *, backlog=100, **kw):
    s = socket.create_server((host or "127.0.0.1", port or 0), backlog=backlog); return [s]
def bind_unix_server_socket(path, *, backlog=100):
    s = socket.socket(socket.AF_UNIX); s.bind(path); s.listen(backlog); return s
