"""An HTTPS destination on 127.0.0.1, served by Python's ssl module (OpenSSL),
for retryq's TLS tests.

    tls_destination.py CERT KEY [CLIENT_CA]

Serves CERT/KEY on a free port and prints "listening PORT" once ready. With
CLIENT_CA it requires a client certificate signed by that CA (mutual TLS):
a client without one fails the handshake. Every request is answered 204 and
logged as "request METHOD PATH client=CN" (CN of the client certificate, or
"-"), except a POST to /token, which is answered as an OAuth 2 token endpoint
(200, access_token "tok-over-tls") and logged the same way. Runs until
terminated.
"""
import http.server
import ssl
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        peer = self.connection.getpeercert() or {}
        cn = "-"
        for rdn in peer.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    cn = value
        print(f"request {self.command} {self.path} client={cn}", flush=True)
        if self.command == "POST" and self.path == "/token":
            body = b'{"access_token": "tok-over-tls", "token_type": "Bearer", "expires_in": 3600}'
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(204)
        self.send_header("content-length", "0")
        self.end_headers()

    do_GET = do_POST = do_PUT = answer

    def log_message(self, *args):
        pass


def main():
    cert, key = sys.argv[1], sys.argv[2]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    if len(sys.argv) > 3:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(sys.argv[3])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
