"""A DNS rebinding attempt on `--deny-private-tunnels`, run inside a network and mount namespace of its own:

    unshare --net --mount --propagation private python -m tests.netns_rebinding WORKDIR

In the namespace a name server on 127.0.0.1:53 answers `rebind.test` with a public address (PUBLIC, put on
the namespace's loopback interface) the first time and with 127.0.0.1 after that, and `late.test` with no
address the first time and 127.0.0.1 after that. The same port is served on both addresses, each answering
with its own word. A client opens a tunnel to each name through a `ruststash serve --deny-private-tunnels`;
the report (JSON on stdout) says who answered (empty: nobody) and how many address lookups of each name the
name server saw.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

from tests.harness import ProxyProcess, free_port

PUBLIC = "8.8.8.8"  # a global address; in this namespace it is on `lo` and nothing leaves it
INTERNAL = "127.0.0.1"
# The address of each name for its first, second, ... A query (the last one repeats); None: no address.
ANSWERS: dict[str, list[str | None]] = {"rebind.test": [PUBLIC, INTERNAL], "late.test": [None, INTERNAL]}
TYPE_A = 1


class RebindingNameServer:
    """UDP DNS on 127.0.0.1:53 answering A queries from ANSWERS; other queries get an empty answer."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 53))
        self.a_queries = dict.fromkeys(ANSWERS, 0)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                query, client = self.sock.recvfrom(512)
            except OSError:
                return  # closed
            reply = self._answer(query)
            if reply is not None:
                self.sock.sendto(reply, client)

    def _answer(self, query: bytes) -> bytes | None:
        if len(query) < 12:
            return None
        end, labels = 12, []
        while end < len(query) and query[end]:
            labels.append(query[end + 1 : end + 1 + query[end]])
            end += 1 + query[end]
        question = query[12 : end + 5]
        if len(question) < end - 12 + 5:
            return None
        qtype = struct.unpack("!H", query[end + 1 : end + 3])[0]
        name, address = b".".join(labels).decode(errors="replace").lower(), None
        if name in ANSWERS and qtype == TYPE_A:
            answers = ANSWERS[name]
            address = answers[min(self.a_queries[name], len(answers) - 1)]
            self.a_queries[name] += 1
        header = query[:2] + struct.pack("!HHHHH", 0x8180, 1, 1 if address else 0, 0, 0)
        answer = b""
        if address is not None:
            answer = struct.pack("!HHHIH", 0xC00C, TYPE_A, 1, 0, 4) + socket.inet_aton(address)
        return header + question + answer

    def close(self) -> None:
        self.sock.close()


def serve_word(address: str, port: int, word: bytes) -> socket.socket:
    """A TCP server on address:port that answers every connection with `word` and closes it."""
    listener = socket.create_server((address, port))

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed
            with conn:
                conn.sendall(word)

    threading.Thread(target=accept, daemon=True).start()
    return listener


def through_tunnel(proxy_port: int, target: str) -> bytes:
    """CONNECT to `target` through the proxy, send a line, return what came back (b"" if refused)."""
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=10) as conn:
        conn.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        if not conn.recv(4096).startswith(b"HTTP/1.1 200"):
            return b""
        conn.sendall(b"hello\n")  # the proxy connects upstream (lazily) once the client sends
        received = b""
        while chunk := conn.recv(4096):
            received += chunk
        return received


def main(workdir: Path) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "address", "add", f"{PUBLIC}/32", "dev", "lo"], check=True)
    resolv = workdir / "resolv.conf"
    resolv.write_text(f"nameserver {INTERNAL}\n")
    subprocess.run(["mount", "--bind", str(resolv), "/etc/resolv.conf"], check=True)

    names = RebindingNameServer()
    port = free_port()
    listeners = [serve_word(PUBLIC, port, b"public\n"), serve_word(INTERNAL, port, b"internal\n")]
    proxy = ProxyProcess(workdir, ["--deny-private-tunnels"]).start()
    try:
        answers = {name: through_tunnel(proxy.port, f"{name}:{port}").decode().strip() for name in ANSWERS}
    finally:
        proxy.stop()
        names.close()
        for listener in listeners:
            listener.close()
    report = {"answers": answers, "a_queries": names.a_queries, "log": proxy.log()}
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
