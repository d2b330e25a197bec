"""Fires 16 PUTs conditional on the same ETag at a moto server at once, N rounds, and counts the
rounds in which more than one succeeded (S3 allows exactly one). Run with the rig's venv:

    target/rig/venv/bin/python xtask/rig/moto_if_match_race.py [rounds]

It starts xtask/rig/moto_s3_server.py twice with a tiny interpreter switch interval, without and
with its PutObject lock, and prints both counts. See docs/safety.md.
"""

import http.client
import os
import socket
import subprocess
import sys
import threading
import time

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

CREDS = Credentials("test", "test")
CONTENDERS = 16


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def signed(method, url, body, headers):
    request = AWSRequest(method=method, url=url, data=body, headers=headers)
    S3SigV4Auth(CREDS, "s3", "us-east-1").add_auth(request)
    return dict(request.headers.items())


def race(rounds, unlocked):
    port = free_port()
    env = dict(os.environ, LEASE_MOTO_SWITCH_INTERVAL="0.000001")
    if unlocked:
        env["LEASE_MOTO_UNLOCKED"] = "1"
    server = os.path.join(os.path.dirname(os.path.abspath(__file__)), "moto_s3_server.py")
    proc = subprocess.Popen(
        [sys.executable, server, "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        base = f"http://127.0.0.1:{port}"

        def request(method, path, body=b"", headers=None):
            conn = http.client.HTTPConnection("127.0.0.1", port)
            conn.request(method, path, body, signed(method, base + path, body, headers or {}))
            response = conn.getresponse()
            response.read()
            return response

        request("PUT", "/race-bucket")
        doubles = 0
        for n in range(rounds):
            etag = request("PUT", "/race-bucket/k", b"v0-%d" % n).getheader("ETag")
            prepared = []
            for i in range(CONTENDERS):
                body = b"w-%d-%d" % (n, i)
                headers = signed("PUT", base + "/race-bucket/k", body, {"If-Match": etag})
                head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                raw = (
                    f"PUT /race-bucket/k HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{head}"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                ).encode() + body
                prepared.append((socket.create_connection(("127.0.0.1", port)), raw))
            start = threading.Barrier(CONTENDERS)
            codes = []

            def send(sock, raw):
                start.wait()
                sock.sendall(raw)
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
                sock.close()
                codes.append(answer.split(b" ", 2)[1])

            threads = [threading.Thread(target=send, args=p) for p in prepared]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            doubles += codes.count(b"200") > 1
        return doubles
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    print(f"moto without the lock: {race(rounds, True)} of {rounds} rounds had more than one success")
    print(f"moto with the lock:    {race(rounds, False)} of {rounds} rounds had more than one success")
