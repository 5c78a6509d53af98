"""The inside half of a network repository's relay (netrepo.py): run in the restore sandbox under
the system's `python3 -I -S` (standard library only, handed over by descriptor like proof.py).

It listens on 127.0.0.1:PORT on the sandbox's own loopback, forwards every connection there, byte
for byte, to the Unix socket of the outside half (which connects to the repository's endpoint and
nowhere else), and runs the backup tool as its child with the sandbox's environment. It exits with
the tool's status; the listener dies with it and with the sandbox's PID namespace.

    python3 -I -S forward.py --listen 443 --to /path/relay.sock -- pgbackrest … restore
"""

import socket
import subprocess
import sys
import threading


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _handle(conn: socket.socket, path: str) -> None:
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(path)
    except OSError:
        conn.close()
        upstream.close()
        return
    back = threading.Thread(target=_pipe, args=(upstream, conn), daemon=True)
    back.start()
    _pipe(conn, upstream)
    back.join()
    conn.close()
    upstream.close()


def _serve(listener: socket.socket, path: str) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=_handle, args=(conn, path), daemon=True).start()


def main(argv: list) -> int:
    if len(argv) < 6 or argv[0] != "--listen" or argv[2] != "--to" or argv[4] != "--":
        print("usage: forward.py --listen PORT --to SOCKET -- COMMAND …", file=sys.stderr)
        return 2
    port, path, command = int(argv[1]), argv[3], argv[5:]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    threading.Thread(target=_serve, args=(listener, path), daemon=True).start()
    try:
        code = subprocess.call(command)
    except OSError as exc:
        print(f"forward.py: cannot run {command[0]}: {exc}", file=sys.stderr)
        return 127
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
