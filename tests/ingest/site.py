"""A tiny web site on 127.0.0.1 for crawler tests: scripted routes and a log of every request it saw."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (slow server)
    etag: str | None = None  # answer 304 to a matching If-None-Match
    last_modified: str | None = None  # answer 304 to an equal If-Modified-Since
    stream_bytes: int = 0  # send this many bytes of filler (huge response), no Content-Length
    then: Route | None = None  # the answer from the second request on (e.g. 429 first, then 200)


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    status: int


class Site:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.log: list[Seen] = []
        self._hits: dict[str, int] = {}
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def do_GET(self) -> None:
                site._serve(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def requests_to(self, path: str) -> list[Seen]:
        return [s for s in self.log if s.path == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path
        headers = {k.lower(): v for k, v in handler.headers.items()}
        route = self.routes.get(path) or self.routes.get(path.split("?", 1)[0])
        n = self._hits.get(path, 0)
        self._hits[path] = n + 1
        if route is not None and n >= 1 and route.then is not None:
            route = route.then
        if route is None:
            self._send(handler, path, headers, 404, b"not found", {"Content-Type": "text/plain"})
            return
        if route.delay:
            time.sleep(route.delay)
        if (route.etag and headers.get("if-none-match") == route.etag) or (
            route.last_modified and headers.get("if-modified-since") == route.last_modified
        ):
            extra = {"ETag": route.etag} if route.etag else {}
            self._send(handler, path, headers, 304, b"", extra)
            return
        extra = dict(route.headers)
        if route.etag:
            extra["ETag"] = route.etag
        if route.last_modified:
            extra["Last-Modified"] = route.last_modified
        if route.stream_bytes:
            self.log.append(Seen(path, headers, route.status))
            handler.send_response(route.status)
            for k, v in extra.items():
                handler.send_header(k, v)
            handler.send_header("Connection", "close")
            handler.end_headers()
            chunk = b"x" * 65536
            sent = 0
            try:
                while sent < route.stream_bytes:
                    handler.wfile.write(chunk)
                    sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        self._send(handler, path, headers, route.status, route.body, extra)

    def _send(
        self,
        handler: BaseHTTPRequestHandler,
        path: str,
        headers: dict[str, str],
        status: int,
        body: bytes,
        extra: dict[str, str],
    ) -> None:
        self.log.append(Seen(path, headers, status))
        try:
            handler.send_response(status)
            for k, v in extra.items():
                handler.send_header(k, v)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            if body:
                handler.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


STORY = (
    "Shares of Apple fell 4% on Tuesday after the company warned that demand for its flagship phones in China had "
    "weakened more than analysts expected, sending $AAPL to its lowest level in three months. "
    "The iPhone maker said revenue for the quarter would come in below its previous guidance, citing a slower "
    "upgrade cycle and rising competition from domestic brands. "
    "Analysts at Goldman Sachs cut their price target, saying the warning raised questions about growth in the "
    "company's most important overseas market. "
    "Suppliers including TSMC also slipped in Asian trading as investors weighed the knock-on effects for chip "
    "orders in the coming quarters."
)
OTHER_STORY = (
    "HSBC reported a jump in quarterly profit on Monday as higher interest rates lifted lending margins across its "
    "Asian business, and the bank announced a new share buyback worth up to two billion dollars. "
    "Chief executive officers said credit quality remained robust despite a weaker property market in Hong Kong "
    "and mainland China, although provisions for bad loans rose slightly from a year earlier. "
    "The lender's shares rose nearly three percent in London trading after the results were published."
)


def article_html(
    title: str, paragraphs: str, *, published: str = "2026-11-20T08:30:00+01:00", charset: str | None = "utf-8"
) -> str:
    meta = f'<meta charset="{charset}">' if charset else ""
    paras = "".join(f"<p>{s.strip()}.</p>" for s in paragraphs.split(". ") if s.strip())
    return (
        f"<!DOCTYPE html><html><head>{meta}<title>{title}</title>"
        f'<meta property="article:published_time" content="{published}"></head>'
        f"<body><nav><a href='/'>Home</a> | <a href='/markets'>Markets</a></nav>"
        f"<article><h1>{title}</h1>{paras}</article>"
        f"<footer>Copyright 2026 Example News. All rights reserved.</footer></body></html>"
    )


def rss(items: list[tuple[str, str, str]], *, encoding: str = "utf-8") -> str:
    """items: (title, link, pubDate RFC 822)."""
    body = "".join(
        f"<item><title>{t}</title><link>{link}</link><guid>{link}</guid><pubDate>{d}</pubDate>"
        f"<description>{t} - summary.</description></item>"
        for t, link, d in items
    )
    return (
        f'<?xml version="1.0" encoding="{encoding}"?><rss version="2.0"><channel><title>Example News</title>'
        f"<link>http://example/</link><description>Markets</description>{body}</channel></rss>"
    )
