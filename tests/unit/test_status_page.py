"""The status page at ``GET /`` (service/status.py), content negotiation and ``server.auth``,
through FastAPI's TestClient around a real daemon and the in-memory Label Studio."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

import pytest
import respx
from fastapi.testclient import TestClient

from ls_space_sync.service.auth import presented_token
from ls_space_sync.service.daemon import Daemon
from ls_space_sync.service.http import create_app
from ls_space_sync.service.status import ProjectTitles, _seconds, _size, prefers_html
from ls_space_sync.settings import load_settings
from tests.fakes import KEY, URL, FakeLabelStudio
from tests.unit.test_daemon import make_settings

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
TOKEN = "unit-status-token"
SECRET = "unit-webhook-secret"
EVIL = '<script>alert("t")</script> & <b>bold</b>'


class Fields(HTMLParser):
    """``{(project, field): [text, ...]}`` and ``{(project, field): [datetime attr, ...]}`` of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.text: dict[tuple[str, str], list[str]] = {}
        self.times: dict[tuple[str, str], list[str]] = {}
        self._project = ""
        self._open: list[tuple[str, str, int]] = []  # (tag, field, start index in the buffer)
        self._buf: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "data-project" in a:
            self._project = a["data-project"] or ""
        if "data-field" in a:
            key = (self._project, a["data-field"] or "")
            if a.get("datetime") is not None:
                self.times.setdefault(key, []).append(a["datetime"] or "")
            self._open.append((tag, a["data-field"] or "", len(self._buf)))

    def handle_endtag(self, tag):
        if tag == "section":
            self._project = ""
        if self._open and self._open[-1][0] == tag:
            _, name, start = self._open.pop()
            self.text.setdefault((self._project, name), []).append(" ".join("".join(self._buf[start:]).split()))

    def handle_data(self, data):
        self._buf.append(data)


def fields(html: str) -> Fields:
    parser = Fields()
    parser.feed(html)
    return parser


@pytest.fixture
def fake():
    with respx.mock(assert_all_called=False) as router:
        yield FakeLabelStudio().mount(router)


@pytest.fixture
def service(tmp_path, fake):
    """``service(**overrides) -> (daemon, client)``; the daemon's scheduler is paused (tests run jobs)."""
    made = []

    def make(**overrides):
        server = {"webhook_secret": SECRET, "debounce_seconds": 0.5, **overrides.pop("server", {})}
        d = Daemon(make_settings(tmp_path, server=server, **overrides))
        d.scheduler.start(paused=True)
        d.set_projects(list(d.settings.projects))
        client = TestClient(create_app(d))
        made.append((d, client))
        return d, client

    yield make
    for d, client in made:
        client.close()
        d.stop(timeout=5)


@pytest.mark.parametrize("accept, html", [
    (BROWSER, True),  # Chromium, Firefox
    ("text/html", True),
    (None, False),  # no header: as / answered before the page
    ("*/*", False),  # curl, python-requests (Label Studio's ML-backend check)
    ("application/json", False),
    ("application/json, text/html;q=0.5", False),
    ("text/html;q=0.5, application/json", False),
    ("text/*, application/json;q=0.4", True),
    ("text/html;q=0, */*", False),
    ("text/html;q=bad", False),
])
def test_html_only_when_accept_prefers_it(accept, html):
    assert prefers_html(accept) is html


def test_slash_is_the_page_for_browsers_and_the_health_json_for_the_rest(service, fake):
    fake.projects[1]["title"] = "Reviews"
    d, client = service()
    page = client.get("/", headers={"Accept": BROWSER})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'none': no script runs
    assert page.headers["vary"] == "Accept"
    assert "<script" not in page.text
    assert fields(page.text).text[("1", "title")] == ["Reviews"]
    for accept in ("*/*", "application/json"):
        answer = client.get("/", headers={"Accept": accept})
        assert answer.headers["content-type"] == "application/json"
        assert answer.json().keys() == client.get("/health").json().keys()
    assert client.get("/").json()["status"] == "UP"  # no Accept at all


def test_the_page_shows_what_health_reports_after_a_sync(service, fake):
    fake.add("one")
    fake.add("two", annotations=1)
    d, client = service()
    d.sync_job(1, "schedule")
    fake.add("three")
    fake.touch(1, text="one, edited")
    fake.tick(60)
    d.sync_job(1, "webhook")
    health = client.get("/health").json()["projects"]["1"]
    run = health["last_run"]
    assert (run["inserted"], run["updated"], run["deleted"]) == (1, 1, 0)
    assert run["duration_seconds"] is not None
    page = fields(client.get("/", headers={"Accept": BROWSER}).text)
    for key in ("status", "trigger", "inserted", "updated", "deleted", "tag", "version"):
        assert page.text[("1", f"last_run.{key}")] == [str(run[key])]
    assert page.times[("1", "next_run_at")] == [health["next_run_at"]]
    assert page.text[("1", "consecutive_failures")] == [str(health["consecutive_failures"])]
    assert page.text[("1", "tag_count")] == ["2"]
    assert page.text[("1", "rows")] == ["3", "2"]  # the tags, newest first: tasks in each
    assert page.text[("1", "inserted")] == ["1", "2"]  # the last diffs
    assert page.times[("1", "last_webhook_run_at")] == [run["started_at"]]
    assert page.text[("1", "link")] == ["open in Label Studio \u2197"]
    assert f'href="{URL}/projects/1/data"' in client.get("/", headers={"Accept": BROWSER}).text


def test_everything_shown_is_escaped(service, fake):
    fake.projects[1]["title"] = EVIL
    fake.fail_next = [500]
    d, client = service()
    d.sync_job(1, "schedule")  # fails: the error is shown too
    html = client.get("/", headers={"Accept": BROWSER}).text
    assert "<script>" not in html and "<b>bold</b>" not in html
    assert "&lt;script&gt;alert(&#34;t&#34;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in html
    assert fields(html).text[("1", "title")] == [EVIL]  # what a browser shows: the text itself
    assert fields(html).text[("1", "last_run.status")] == ["failed"]


def test_the_page_renders_while_label_studio_is_down(service, fake):
    d, client = service()
    fake.fail_next = [503] * 5
    page = client.get("/", headers={"Accept": BROWSER})
    assert page.status_code == 200
    assert fields(page.text).text[("1", "title")] == ["project 1"]


def test_titles_are_cached_and_a_failed_lookup_waits(fake):
    fake.projects[1]["title"] = "first"
    titles = ProjectTitles(load_settings(env={"LABEL_STUDIO_URL": URL, "LABEL_STUDIO_API_KEY": KEY}), ttl=300,
                           retry_after=60)
    assert titles.get([1, 99]) == {1: "first", 99: None}  # 99: no such project
    fake.projects[1]["title"] = "second"
    served = fake.served["project"]
    assert titles.get([1, 99]) == {1: "first", 99: None}
    assert fake.served["project"] == served  # both cached, the failure too


def test_auth_guards_the_state_endpoints_and_nothing_else(service, fake):
    d, client = service(server={"auth": TOKEN})
    for path in ("/", "/health", "/metrics"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Accept": BROWSER}):
            refused = client.get(path, headers=headers)
            assert refused.status_code == 401, (path, headers)
            assert TOKEN not in refused.text
        assert refused.headers.get_list("www-authenticate") == [
            'Bearer realm="ls-space-sync"', 'Basic realm="ls-space-sync", charset="UTF-8"']
        assert client.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        basic = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
        assert client.get(path, headers={"Authorization": f"Basic {basic}", "Accept": BROWSER}).status_code == 200
    # the webhook and the ML backend keep their own secrets: Label Studio sends no Authorization
    assert client.get(f"/ml/{SECRET}/health").status_code == 200
    ok = client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 1}},
                     headers={"X-LS-Space-Sync-Secret": SECRET})
    assert ok.status_code == 202


@pytest.mark.parametrize("header, token", [
    (f"Bearer {TOKEN}", TOKEN),
    (f"bearer   {TOKEN} ", TOKEN),
    ("Basic " + base64.b64encode(f"u:{TOKEN}".encode()).decode(), TOKEN),
    ("Basic " + base64.b64encode(b":pa:ss").decode(), "pa:ss"),
    ("Basic " + base64.b64encode(b"no-colon").decode(), None),
    ("Basic !!!", None),
    ("Token abc", None),
    ("Bearer", None),
    (None, None),
])
def test_presented_token(header, token):
    assert presented_token(header) == token


def test_auth_from_the_environment_stays_a_string():
    settings = load_settings(env={"LS_SPACE_SYNC__SERVER__AUTH": "0123"})
    assert settings.server.auth is not None and settings.server.auth.get_secret_value() == "0123"
    assert "0123" not in repr(settings.server)


def test_people_units():
    assert [_seconds(v) for v in (None, 0.42, 12.7, 200, 7500, 2 * 86400 + 3600)] == [
        "\u2014", "0.4 s", "12 s", "3 min 20 s", "2 h 5 min", "2 d 1 h"]
    assert [_size(v) for v in (634, 12_345, 4_500_000, 7 * 10**12)] == ["634 B", "12.3 kB", "4.5 MB", "7000.0 GB"]


def test_mirror_pairs_are_listed(service, fake):
    target = fake.project("target")
    d, client = service(mirrors=[{"source": 1, "target": target, "both_ways": True}])
    html = client.get("/", headers={"Accept": BROWSER}).text
    assert re.search(rf'data-mirror="1-{target}"', html)
    assert "both ways" in html and "no pass yet" in html
