"""Apps through a real server: publish, install (valid and invalid config), run, upgrade,
uninstall, nested instances and their hidden events."""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any

import httpx

from tests.conftest import LiveServer

HELPER_YML = "name: Helper\nslug: helper\nconfig:\n  value: {}\n"
PING = """def handler(system, this, inputs):
    this.emit("pinged", {"n": 1})
    this.success(pong=True)
"""
TOOLS_YML = """name: Tools
slug: tools
config:
  value:
    GREETING: hello
  schema:
    type: object
    required: [GREETING]
    properties:
      GREETING: {type: string}
      TIMES: {type: integer, minimum: 1, default: 2}
apps:
  helper: {app: helper, version: 1.0.0}
"""
GREET_V1 = """def handler(system, this, inputs):
    this.emit("executed", {"who": inputs.get("who")})
    system.setting("count").save(1)
    this.success(text=system.config["GREETING"] * system.config["TIMES"], version=1)
"""
GREET_V2 = GREET_V1.replace("version=1", "version=2")
DEEP = """def handler(system, this, inputs):
    child = this.flow("helper.ping")
    this.success(child=child.get("output_value"))
"""
HOST_YML = """name: Host
slug: host
config:
  value:
    API_URL: https://api.example.com
apps:
  toolbox:
    app: tools
    version: 1.0.0
    config: {GREETING: "{{config.API_URL}} "}
"""
MAIN = """def handler(system, this, inputs):
    run = this.flow("toolbox.greet", {"who": "host"})
    deep = this.flow("toolbox.deep")
    this.success(greet=run.get("output_value"), deep=deep.get("output_value"))
"""


STATUS_PAGE = '<p id="t">{{ data.text }}</p><p id="c">{{ config.GREETING }}</p>'


def apply(server: LiveServer, slug: str, files: dict[str, str]) -> httpx.Response:
    return server.client.post(f"/api/v1/workspaces/{slug}/apply", json={"files": files})


def publish(server: LiveServer, slug: str, version: str) -> httpx.Response:
    return server.client.post(f"/api/v1/workspaces/{slug}/publish", json={"version": version})


def _run(server: LiveServer, ws: str, flow: str) -> dict[str, Any]:
    started = server.client.post(f"/api/v1/workspaces/{ws}/executions", json={"flow": flow})
    assert started.status_code == 201, started.text
    return server.wait_for(ws, started.json()["id"])


def events(server: LiveServer, ws: str, **params: str) -> list[dict[str, Any]]:
    response = server.client.get(f"/api/v1/workspaces/{ws}/events", params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def publish_tools(server: LiveServer) -> None:
    assert apply(server, "helper", {"workspace.yml": HELPER_YML, "flows/ping.py": PING})
    assert publish(server, "helper", "1.0.0").status_code == 201
    files = {
        "workspace.yml": TOOLS_YML,
        "flows/greet.py": GREET_V1,
        "flows/deep.py": DEEP,
        "pages/status.html": STATUS_PAGE,
        "pages/status.yml": "access: public\nflow: greet\n",
    }
    assert apply(server, "tools", files).status_code == 200
    published = publish(server, "tools", "1.0.0")
    assert published.status_code == 201, published.text
    assert published.json()["flows"] == ["deep", "greet"]


def test_publish_install_run_upgrade_uninstall(live_server: LiveServer) -> None:
    publish_tools(live_server)
    again = publish(live_server, "tools", "1.0.0")
    assert again.status_code == 409
    assert "already has a version '1.0.0'" in again.json()["error"]["message"]
    versions = live_server.client.get("/api/v1/apps/tools/versions").json()["items"]
    assert [(v["version"], v["published_by"]) for v in versions] == [("1.0.0", "admin")]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", versions[0]["published_at"])

    applied = apply(live_server, "host", {"workspace.yml": HOST_YML, "flows/main.py": MAIN})
    assert applied.status_code == 200, applied.text
    assert applied.json()["changes"]["apps"] == ["+toolbox"]
    instance = live_server.client.get("/api/v1/workspaces/host/apps").json()["items"][0]
    # host config templated in, the schema's default filled in
    assert instance["config"] == {"GREETING": "https://api.example.com ", "TIMES": 2}

    main = run(live_server, "host", "main")
    assert main["status"] == "success", main
    assert main["output_value"]["greet"]["text"] == "https://api.example.com " * 2
    assert main["output_value"]["greet"]["version"] == 1
    assert main["output_value"]["deep"] == {"child": {"pong": True}}
    # the instance's settings are its own namespace in the host
    listed = live_server.client.get("/api/v1/workspaces/host/settings").json()["items"]
    names = [s["name"] for s in listed]
    assert "toolbox.count" in names and "count" not in names

    # events: prefixed, carrying the instance chain; nested ones hidden from the root feed
    executed = events(live_server, "host", types="toolbox.executed")
    assert len(executed) == 1
    assert executed[0]["source"]["appInstanceFullSlug"] == "toolbox"
    assert executed[0]["source"]["appInstanceDepth"] == 1
    assert executed[0]["payload"] == {"who": "host"}
    everything = events(live_server, "host", limit="500")
    assert not [e for e in everything if e["source"].get("appInstanceDepth", 0) >= 2]
    assert not events(live_server, "host", types="toolbox.helper.pinged")
    assert not events(live_server, "host", text="pinged")
    cloud = live_server.client.get(
        "/api/v1/workspaces/host/events",
        params={"limit": "500"},
        headers={"Accept": "application/cloudevents-batch+json"},
    )
    assert cloud.status_code == 200
    assert "toolbox.helper" not in cloud.text and "toolbox.executed" in cloud.text
    nested = events(live_server, "host", **{"source.appInstanceFullSlug": "toolbox.helper"})
    assert {e["type"] for e in nested} >= {"toolbox.helper.pinged"}
    assert all(e["source"]["appInstanceDepth"] == 2 for e in nested)
    native = {e["type"] for e in events(live_server, "host", types="workspaces.app.*")}
    assert native == {"workspaces.app.installed"}
    assert events(live_server, "tools", types="apps.published")

    # upgrade over the API; a run started before keeps its version (its script snapshot)
    tools_v2 = {"workspace.yml": TOOLS_YML, "flows/greet.py": GREET_V2, "flows/deep.py": DEEP}
    assert apply(live_server, "tools", tools_v2).status_code == 200
    assert publish(live_server, "tools", "2.0.0").status_code == 201
    upgraded = live_server.client.put(
        "/api/v1/workspaces/host/apps/toolbox",
        json={"app": "tools", "version": "2.0.0", "config": {"GREETING": "hi", "TIMES": 1}},
    )
    assert upgraded.status_code == 200, upgraded.text
    assert upgraded.json()["change"] == "upgraded"
    assert run(live_server, "host", "main")["output_value"]["greet"] == {"text": "hi", "version": 2}
    configured = {e["type"] for e in events(live_server, "host", types="workspaces.app.*")}
    assert "workspaces.app.configured" in configured

    # uninstall: the flow is gone
    gone = live_server.client.delete("/api/v1/workspaces/host/apps/toolbox")
    assert gone.status_code == 204
    failed = run(live_server, "host", "main")
    assert failed["status"] == "error"
    assert "toolbox.greet" in (failed["message"] or "")
    kinds = {e["type"] for e in events(live_server, "host", types="workspaces.app.*")}
    assert "workspaces.app.uninstalled" in kinds


def test_invalid_instance_config_names_field_and_rule(live_server: LiveServer) -> None:
    publish_tools(live_server)
    bad = HOST_YML.replace('{GREETING: "{{config.API_URL}} "}', "{GREETING: hi, TIMES: 0}")
    response = apply(live_server, "host", {"workspace.yml": bad, "flows/main.py": MAIN})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["details"]["field"] == "apps.toolbox.config.TIMES"
    assert "minimum" in error["message"]
    missing = HOST_YML.replace('{GREETING: "{{config.API_URL}} "}', "{}")
    response = apply(live_server, "host", {"workspace.yml": missing, "flows/main.py": MAIN})
    assert response.status_code == 422
    assert "'GREETING' is a required property" in response.json()["error"]["message"]
    unknown = HOST_YML.replace("version: 1.0.0", "version: 9.9.9")
    response = apply(live_server, "host", {"workspace.yml": unknown, "flows/main.py": MAIN})
    assert response.status_code == 404
    assert "app 'tools' has no version '9.9.9'" in response.json()["error"]["message"]
    # nothing of the workspace was created by the failed applies
    assert live_server.client.get("/api/v1/workspaces/host").status_code == 404
    api = live_server.client.put(
        "/api/v1/workspaces/helper/apps/t", json={"app": "tools", "version": "1.0.0", "x": 1}
    )
    assert api.status_code == 422


def test_a_workspace_sees_no_other_tenant_through_an_app(live_server: LiveServer) -> None:
    publish_tools(live_server)
    assert apply(live_server, "host", {"workspace.yml": HOST_YML, "flows/main.py": MAIN})
    run(live_server, "host", "main")
    # the app's own workspace does not receive the host's instance events
    assert not events(live_server, "tools", types="toolbox.*")
    assert not events(live_server, "helper", types="pinged")


def run(server: LiveServer, ws: str, flow: str) -> dict[str, Any]:
    record = _run(server, ws, flow)
    if record["status"] != "success":
        kids = server.client.get(f"/api/v1/workspaces/{ws}/executions").json()["items"]
        print([(k["name"], k["status"], k.get("message")) for k in kids])
    return record


def test_cli_publish_install_and_an_automation_on_an_instance_flow(
    live_server: LiveServer,
) -> None:
    from tests.cli.test_cli import cli

    assert apply(live_server, "helper", {"workspace.yml": HELPER_YML, "flows/ping.py": PING})
    published = cli(live_server, "apps", "publish", "helper", "--version", "1.0.0", check=True)
    assert "published helper 1.0.0" in published.stdout
    twice = cli(live_server, "apps", "publish", "helper", "--version", "1.0.0")
    assert twice.returncode != 0 and "already has a version" in twice.stderr
    listed = json.loads(cli(live_server, "apps", "list", "--json", check=True).stdout)
    assert listed["items"][0]["versions"][0]["version"] == "1.0.0"
    host = (
        "name: Host\nslug: host\napps:\n  h: {app: helper, version: 1.0.0}\n"
        "automations:\n  on-order:\n    flow: h.ping\n    when: {events: [order.created]}\n"
    )
    assert apply(live_server, "host", {"workspace.yml": host}).status_code == 200
    live_server.client.post(
        "/api/v1/workspaces/host/events", json={"type": "order.created", "payload": {}}
    )
    deadline = time.monotonic() + 30
    while not events(live_server, "host", types="h.pinged"):
        assert time.monotonic() < deadline, "the automation did not run the instance's flow"
        time.sleep(0.1)
    installed = cli(
        live_server, "apps", "install", "host", "h2", "--app", "helper", "--version", "1.0.0",
        check=True,
    )  # fmt: skip
    assert "h2: helper 1.0.0 (installed)" in installed.stdout
    cli(live_server, "apps", "uninstall", "host", "h2", check=True)
    slugs = [
        i["slug"] for i in live_server.client.get("/api/v1/workspaces/host/apps").json()["items"]
    ]
    assert slugs == ["h"]


def test_nested_instance_events_never_reach_the_live_stream(live_server: LiveServer) -> None:
    publish_tools(live_server)
    assert apply(live_server, "host", {"workspace.yml": HOST_YML, "flows/main.py": MAIN})
    seen: list[dict[str, Any]] = []
    ready = threading.Event()

    def read() -> None:
        headers = {"Authorization": f"Bearer {live_server.token}"}
        with (
            httpx.Client(base_url=live_server.url, headers=headers, timeout=60) as client,
            client.stream("GET", "/api/v1/workspaces/host/events/stream") as response,
        ):
            ready.set()
            for line in response.iter_lines():
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:]))
                    if seen[-1]["type"] == "marker":
                        return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert ready.wait(10)
    time.sleep(0.3)
    assert run(live_server, "host", "main")["status"] == "success"
    live_server.client.post("/api/v1/workspaces/host/events", json={"type": "marker"})
    reader.join(30)
    types = [e["type"] for e in seen]
    assert "toolbox.executed" in types and types[-1] == "marker"
    assert not [e for e in seen if e["source"].get("appInstanceDepth", 0) >= 2]
    # they exist, for whoever asks for the nested instance
    assert events(live_server, "host", **{"source.appInstanceFullSlug": "toolbox.helper"})


def test_a_running_execution_keeps_its_version(live_server: LiveServer) -> None:
    publish_tools(live_server)
    slow = GREET_V1.replace("    this.emit(", "    import time\n    time.sleep(2)\n    this.emit(")
    slow_files = {"workspace.yml": TOOLS_YML, "flows/greet.py": slow, "flows/deep.py": DEEP}
    assert apply(live_server, "tools", slow_files).status_code == 200
    assert publish(live_server, "tools", "1.1.0").status_code == 201
    host = HOST_YML.replace("version: 1.0.0", "version: 1.1.0")
    assert apply(live_server, "host", {"workspace.yml": host, "flows/main.py": MAIN})
    started = live_server.client.post(
        "/api/v1/workspaces/host/executions", json={"flow": "toolbox.greet"}
    ).json()
    upgraded = live_server.client.put(
        "/api/v1/workspaces/host/apps/toolbox",
        json={"app": "tools", "version": "1.0.0", "config": {"GREETING": "x", "TIMES": 5}},
    )
    assert upgraded.status_code == 200
    ended = live_server.wait_for("host", started["id"])
    assert ended["status"] == "success", ended
    assert ended["app"] == {"instance": "toolbox", "app": "tools", "version": "1.1.0"}
    outputs = ended["output_value"]
    assert isinstance(outputs, dict)
    assert outputs["text"] == "https://api.example.com " * 2  # the config it started with


def test_an_instance_page_is_served_with_the_instance_config(live_server: LiveServer) -> None:
    publish_tools(live_server)
    assert apply(live_server, "host", {"workspace.yml": HOST_YML, "flows/main.py": MAIN})
    with httpx.Client(base_url=live_server.url, timeout=60) as anonymous:
        page = anonymous.get("/pages/host/toolbox.status")
        assert page.status_code == 200, page.text
        greeting = "https://api.example.com "
        assert f'<p id="t">{greeting * 2}</p><p id="c">{greeting}</p>' in page.text
        assert anonymous.get("/pages/host/toolbox.nope").status_code == 404
        assert anonymous.get("/pages/host/nobody.status").status_code == 404
    runs = live_server.client.get(
        "/api/v1/workspaces/host/executions", params={"flow": "toolbox.greet"}
    ).json()["items"]
    assert runs and runs[0]["trigger"]["type"] == "page"
