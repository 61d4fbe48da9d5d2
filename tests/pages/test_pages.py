"""Pages through a real server: public and restricted pages, data, sandbox, apply, export."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.conftest import LiveServer

WORKSPACE = """name: Shop
slug: shop
config:
  value:
    SHOP_NAME: "Bob's <Shop>"
customDomains: [Ops.Example.com, bücher.example]
roles:
  support:
    - {action: read, subject: pages}
"""
LIST_ORDERS = """def handler(system, this, inputs):
    this.success(orders=["a<b", "c"], who=inputs.get("who", "nobody"))
"""
ADD_ORDER = """def handler(system, this, inputs):
    if inputs.get("item") == "fail":
        this.error("no such item")
    this.success(added=inputs.get("item"))
"""
INDEX = """<h1>{{ config.SHOP_NAME }}</h1>
<ul>{% for o in data.orders %}<li>{{ o }}</li>{% endfor %}</ul>
<p id="who">{{ data.who }}</p>
{% if result %}<p id="added">added {{ result.added }}</p>{% endif %}
{% if error %}<p id="error">{{ error }}</p>{% endif %}
<form method="post"><input type="hidden" name="csrf_token" value="{{ csrf_token }}">
<input name="item" id="item"><button type="submit" id="add">Add</button></form>
"""
INDEX_YML = """title: Orders
access: public
flow: list-orders
form: {flow: add-order}
"""
FEED = """{% for e in data %}<li class="e">{{ e.type }} {{ e.payload.n }}</li>{% endfor %}"""
FEED_YML = "access: public\nevents: {types: [order.created], limit: 2}\n"
MEMBERS = "<p>members only, {{ user }}</p>"
SUPPORT = "<p>support desk</p>"
SUPPORT_YML = "title: Support\naccess: [support, owner]\n"


def files(**extra: str) -> dict[str, str]:
    base = {
        "workspace.yml": WORKSPACE,
        "flows/list-orders.py": LIST_ORDERS,
        "flows/add-order.py": ADD_ORDER,
        "pages/index.html": INDEX,
        "pages/index.yml": INDEX_YML,
        "pages/feed.html": FEED,
        "pages/feed.yml": FEED_YML,
        "pages/members.html": MEMBERS,
        "pages/support.html": SUPPORT,
        "pages/support.yml": SUPPORT_YML,
    }
    base.update(extra)
    return base


def apply(server: LiveServer, slug: str, folder: dict[str, str]) -> httpx.Response:
    return server.client.post(f"/api/v1/workspaces/{slug}/apply", json={"files": folder})


def anonymous(server: LiveServer, **kwargs: Any) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=60, **kwargs)


def make_user(server: LiveServer, name: str, role: str) -> str:
    password = f"{name}-password-123"
    response = server.client.post("/api/v1/users", json={"username": name, "password": password})
    assert response.status_code == 201, response.text
    response = server.client.put(f"/api/v1/workspaces/shop/members/{name}", json={"role": role})
    assert response.status_code == 200, response.text
    return password


def login(client: httpx.Client, path: str, user: str, password: str) -> httpx.Response:
    """Follow the redirect to the login form, submit it and land back on ``path``."""
    first = client.get(path)
    assert first.status_code == 303, first.text
    assert first.headers["location"].endswith(f"_login?next={path}")
    form = client.get(first.headers["location"])
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token
    nxt = re.search(r'name="next" value="([^"]+)"', form.text)
    assert nxt and nxt.group(1) == path
    done = client.post(
        first.headers["location"].split("?")[0],
        data={"csrf_token": token.group(1), "next": path, "username": user, "password": password},
    )
    assert done.status_code == 303, done.text
    assert done.headers["location"] == path
    return client.get(path)


def test_public_page_shows_config_and_flow_data_escaped(live_server: LiveServer) -> None:
    assert apply(live_server, "shop", files()).status_code == 200
    with anonymous(live_server) as client:
        response = client.get("/pages/shop/", params={"who": "<script>x</script>"})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/html")
        assert "<h1>Bob&#39;s &lt;Shop&gt;</h1>" in response.text
        assert "<li>a&lt;b</li><li>c</li>" in response.text
        assert '<p id="who">&lt;script&gt;x&lt;/script&gt;</p>' in response.text
        assert client.get("/pages/shop").status_code == 308
        assert client.get("/pages/shop/nope").status_code == 404
        assert client.get("/pages/nope/").status_code == 404
    execution = live_server.client.get(
        "/api/v1/workspaces/shop/executions", params={"flow": "list-orders"}
    ).json()["items"][0]
    assert execution["status"] == "success"


def test_events_page_shows_recent_events_of_its_types(live_server: LiveServer) -> None:
    assert apply(live_server, "shop", files()).status_code == 200
    for n in range(3):
        live_server.client.post(
            "/api/v1/workspaces/shop/events", json={"type": "order.created", "payload": {"n": n}}
        )
    live_server.client.post(
        "/api/v1/workspaces/shop/events", json={"type": "other", "payload": {"n": 9}}
    )
    with anonymous(live_server) as client:
        text = client.get("/pages/shop/feed").text
    assert re.findall(r'<li class="e">([^<]+)</li>', text) == [
        "order.created 2",
        "order.created 1",
    ]


def test_restricted_pages_need_login_and_the_right_role(live_server: LiveServer) -> None:
    assert apply(live_server, "shop", files()).status_code == 200
    password = make_user(live_server, "vera", "visitor")
    with anonymous(live_server) as client:
        page = login(client, "/pages/shop/members", "vera", password)
        assert page.status_code == 200
        assert "members only, vera" in page.text
        # a visitor sees pages and nothing else
        assert client.get("/api/v1/workspaces/shop/flows").status_code == 403
        assert client.get("/api/v1/workspaces/shop").status_code == 403
        listed = client.get("/api/v1/workspaces").json()["items"]
        assert listed == [{"id": listed[0]["id"], "slug": "shop", "name": "Shop"}]
        # a page for other roles
        assert client.get("/pages/shop/support").status_code == 403
    support_password = make_user(live_server, "sam", "support")
    with anonymous(live_server) as client:
        assert "support desk" in login(client, "/pages/shop/support", "sam", support_password).text
    with anonymous(live_server) as client:
        wrong = client.post(
            "/pages/shop/_login",
            data={"csrf_token": "x" * 40, "username": "vera", "password": password},
        )
        assert wrong.status_code == 403  # no CSRF cookie: the form was not ours
    # another workspace's member: not a member here
    live_server.client.post("/api/v1/workspaces", json={"slug": "other"})
    pw = live_server.client.post(
        "/api/v1/users", json={"username": "olga", "password": "olga-password-123"}
    )
    assert pw.status_code == 201
    live_server.client.put("/api/v1/workspaces/other/members/olga", json={"role": "owner"})
    with anonymous(live_server) as client:
        assert login(client, "/pages/shop/members", "olga", "olga-password-123").status_code == 403


def test_page_form_runs_its_flow_with_csrf(live_server: LiveServer) -> None:
    assert apply(live_server, "shop", files()).status_code == 200
    with anonymous(live_server) as client:
        page = client.get("/pages/shop/")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token
        missing = client.post("/pages/shop/", data={"item": "pen"})
        assert missing.status_code == 403
        ok = client.post("/pages/shop/", data={"item": "pen", "csrf_token": token.group(1)})
        assert ok.status_code == 200, ok.text
        assert '<p id="added">added pen</p>' in ok.text
        failed = client.post("/pages/shop/", data={"item": "fail", "csrf_token": token.group(1)})
        assert failed.status_code == 422
        assert '<p id="error">no such item</p>' in failed.text
    with anonymous(live_server) as other:  # another visitor's token is not valid here
        other.get("/pages/shop/")
        stolen = other.post("/pages/shop/", data={"item": "pen", "csrf_token": token.group(1)})
        assert stolen.status_code == 403
    with anonymous(live_server) as client:  # a page without a form
        client.get("/pages/shop/feed")
        assert client.post("/pages/shop/feed", data={"a": "b"}).status_code == 405


def test_template_errors_name_file_and_line_and_change_nothing(live_server: LiveServer) -> None:
    assert apply(live_server, "shop", files()).status_code == 200
    before = live_server.client.get("/api/v1/workspaces/shop").json()["version"]
    bad = apply(live_server, "shop", files(**{"pages/members.html": "<p>\n\n{{ x + }}\n</p>"}))
    assert bad.status_code == 422
    details = bad.json()["error"]["details"]
    assert details["file"] == "pages/members.html"
    assert details["line"] == 3
    include = apply(live_server, "shop", files(**{"pages/members.html": "\n{% include 'x' %}"}))
    assert include.status_code == 422
    assert include.json()["error"]["details"]["file"] == "pages/members.html"
    assert include.json()["error"]["details"]["line"] == 2
    meta = apply(live_server, "shop", files(**{"pages/feed.yml": "access: [nobody]\n"}))
    assert meta.status_code == 422
    assert "unknown role 'nobody'" in meta.json()["error"]["message"]
    orphan = apply(live_server, "shop", files(**{"pages/ghost.yml": "title: x\n"}))
    assert orphan.status_code == 422
    assert orphan.json()["error"]["details"]["file"] == "pages/ghost.yml"
    unknown_flow = apply(live_server, "shop", files(**{"pages/feed.yml": "flow: nope\n"}))
    assert "no flows/nope.py" in unknown_flow.json()["error"]["message"]
    assert live_server.client.get("/api/v1/workspaces/shop").json()["version"] == before
    with anonymous(live_server) as client:
        assert "members only" in login_free_members(live_server, client)


def login_free_members(server: LiveServer, client: httpx.Client) -> str:
    """The members page as the admin (its template is unchanged)."""
    response = client.get(
        "/pages/shop/members", headers={"Authorization": f"Bearer {server.token}"}
    )
    assert response.status_code == 200
    return response.text


def test_sandbox_refuses_escapes(live_server: LiveServer) -> None:
    escapes = {
        "a": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "b": "{{ config.__class__.__init__.__globals__ }}",
        "c": "{{ range.__globals__ }}",
        "d": "{{ self.__init__.__globals__.__builtins__ }}",
        "e": "{{ lipsum.__globals__.os.popen('id').read() }}",
        "f": "{{ data.update({'x': 1}) }}",
    }
    folder = files()
    for name, template in escapes.items():
        folder[f"pages/{name}.html"] = "<p>" + template + "</p>"
        folder[f"pages/{name}.yml"] = "access: public\n"
    # Over its CPU budget: stopped after a second, and the server answers meanwhile.
    folder["pages/spin.html"] = (
        "{% for a in range(99999) %}{% for b in range(99999) %}{% endfor %}{% endfor %}"
    )
    folder["pages/spin.yml"] = "access: public\n"
    assert apply(live_server, "shop", folder).status_code == 200
    with anonymous(live_server) as client:
        for name in escapes:
            text = client.get(f"/pages/shop/{name}").text
            assert "<class" not in text and "uid=" not in text and "builtins" not in text.lower()
            assert "&lt;class" not in text
        with ThreadPoolExecutor(1) as pool:
            spinning = pool.submit(client.get, "/pages/shop/spin")
            time.sleep(0.2)
            assert live_server.client.get("/api/v1/health").status_code == 200
            assert not spinning.done()  # health answered while the page was still rendering
            response = spinning.result()
        assert response.status_code == 500
        assert "more than 1 s of CPU" in response.text


def test_export_round_trips_pages(live_server: LiveServer) -> None:
    folder = files()
    assert apply(live_server, "shop", folder).status_code == 200
    exported = live_server.client.get("/api/v1/workspaces/shop/export").json()["files"]
    for path in folder:
        if path.startswith("pages/"):
            assert exported[path] == folder[path]
    again = apply(live_server, "shop", exported).json()
    assert again["changed"] is False
    listed = live_server.client.get("/api/v1/workspaces/shop/pages").json()["items"]
    by_slug = {p["slug"]: p for p in listed}
    assert by_slug["index"]["url"] == "/pages/shop/"
    assert by_slug["support"]["access"] == ["support", "owner"]
    removed = dict(folder)
    del removed["pages/feed.html"], removed["pages/feed.yml"]
    result = apply(live_server, "shop", removed).json()
    assert result["changes"]["pages"] == ["-feed"]
    with anonymous(live_server) as client:
        assert client.get("/pages/shop/feed").status_code == 404
