"""Binding and sign-in: a public address needs ``--auth`` (or ``--insecure``), and without credentials
neither the page, its config nor its API gives away project data. Requests go to 127.0.0.1 only,
also when the app binds 0.0.0.0."""

from __future__ import annotations

import http.client
import http.cookiejar
import json
import shutil
import ssl
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from browser import headless_chrome
from test_app import ARTIFACTS, Server, assert_one_line_error, http_get, run_app

SECRET_PROJECT = "top-secret-roads"
USER, PASSWORD = "alice", "s3cret:pass"


# The command line (in-process: nothing is served) -----------------------------------------------


def options(*argv: str, environ: dict[str, str] | None = None) -> tuple[dict, list[str]]:
    import app

    return app.launch_options(app.parse_args(list(argv)), environ or {})


def test_loopback_is_the_default_with_history_off_and_an_upload_limit():
    launch, warnings = options()
    assert (launch["server_name"], launch["auth"], launch["share"], launch["run_history"]) == ("127.0.0.1", None,
                                                                                             False, False)
    assert launch["max_file_size"] == "2gb" and warnings == []
    for host in ("localhost", "127.0.0.2", "::1", "[::1]"):
        assert options("--host", host)[0]["server_name"] == host


def test_a_public_host_needs_auth_or_a_loud_insecure():
    import app

    for host in ("0.0.0.0", "::", "192.168.1.20", "stpp.example.org"):
        with pytest.raises(app.UsageError, match=f"--host {host} serves the workspace to the network: give --auth"):
            options("--host", host)
    launch, warnings = options("--host", "0.0.0.0", "--insecure")
    assert launch["auth"] is None and "WITHOUT SIGN-IN" in warnings[0] and len(warnings[0].splitlines()) >= 3
    launch, _ = options("--host", "0.0.0.0", "--auth", "a:1", "--auth", "b:x:y")
    assert launch["auth"] == [("a", "1"), ("b", "x:y")] and launch["auth_message"]
    launch, warnings = options("--host", "0.0.0.0", environ={"STPP_AUTH": f"{USER}:{PASSWORD}"})
    assert launch["auth"] == [(USER, PASSWORD)]
    assert any("unencrypted" in w for w in warnings)
    for bad in ("alice", ":pw", "alice:"):
        with pytest.raises(app.UsageError, match="user:password"):
            options("--auth", bad)


def test_tls_files_and_the_upload_limit_are_checked(tmp_path: Path):
    import app

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    key.write_text("k")
    with pytest.raises(app.UsageError, match="both --ssl-keyfile and --ssl-certfile"):
        options("--ssl-keyfile", str(key))
    with pytest.raises(app.UsageError, match="cert.pem: no such file"):
        options("--ssl-keyfile", str(key), "--ssl-certfile", str(cert))
    cert.write_text("c")
    launch, _ = options("--ssl-keyfile", str(key), "--ssl-certfile", str(cert))
    assert (launch["ssl_keyfile"], launch["ssl_certfile"]) == (str(key), str(cert))
    for given, expected in (("500mb", "500mb"), ("2 GB", "2gb"), ("1048576", "1048576b")):
        assert options("--max-upload", given)[0]["max_file_size"] == expected
    for bad in ("lots", "5zb", "0mb", "-1"):
        with pytest.raises(app.UsageError, match="--max-upload"):
            options("--max-upload", bad)


def test_public_host_without_auth_exits_2_before_touching_the_workspace(tmp_path: Path):
    workspace = tmp_path / "workspace"
    result = run_app("--host", "0.0.0.0", "--workspace", str(workspace))
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "--host 0.0.0.0 serves the workspace to the network: give --auth")
    assert not workspace.exists()
    result = run_app("--host", "0.0.0.0", "--auth", "nopassword", "--workspace", str(workspace))
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "--auth must be user:password")


# A served app with sign-in --------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    from stpp.store import create_project, open_store

    root = tmp_path_factory.mktemp("auth")
    with open_store(root / "workspace") as store:
        create_project(store, SECRET_PROJECT, {"classes": ["road", "car"]})
    srv = Server(root / "workspace", root, "--host", "0.0.0.0", "--auth", f"{USER}:{PASSWORD}", "--no-demo")
    try:
        srv.wait_until_up()
        yield srv
    finally:
        srv.stop()


def request(url: str, data: dict | None = None, opener=None, form: bool = False) -> tuple[int, str]:
    """GET (or POST ``data`` as JSON or a form) and return the status and body, whatever the status."""
    body = headers = None
    if data is not None:
        body = (urllib.parse.urlencode(data) if form else json.dumps(data)).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded" if form else "application/json"}
    call = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with (opener or urllib.request.build_opener()).open(call, timeout=30) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")


def test_without_credentials_nothing_names_a_project(server: Server):
    status, page = request(server.url)
    assert status == 200 and '"auth_required":true' in page.replace(" ", "")
    # Gradio embeds the API description in its sign-in page: no component may carry project names.
    assert SECRET_PROJECT not in page, ("a project name is in the sign-in page; a component was built with "
                                        "store data (build pickers with services.project_picker)")
    for path in ("config", "gradio_api/info", "gradio_api/openapi.json", f"gradio_api/file={server.workspace}/stpp.db"):
        status, body = request(server.url + path)
        assert status == 401 and SECRET_PROJECT not in body, (path, status)
    for path in ("gradio_api/call/list_projects", "gradio_api/queue/join", "gradio_api/run/list_projects"):
        status, body = request(server.url + path, {"data": [], "fn_index": 0, "session_hash": "x"})
        assert status == 401 and SECRET_PROJECT not in body, (path, status)


def test_with_credentials_the_api_lists_the_projects(server: Server):
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    status, _ = request(server.url + "login", {"username": USER, "password": "wrong"}, opener, form=True)
    assert status == 400
    status, _ = request(server.url + "login", {"username": USER, "password": PASSWORD}, opener, form=True)
    assert status == 200
    status, body = request(server.url + "gradio_api/call/list_projects", {"data": []}, opener)
    assert status == 200
    event_id = json.loads(body)["event_id"]
    status, stream = request(server.url + f"gradio_api/call/list_projects/{event_id}", opener=opener)
    assert status == 200 and SECRET_PROJECT in stream


@pytest.mark.browser
def test_the_browser_gets_the_sign_in_page_then_the_projects(server: Server, tmp_path: Path):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with headless_chrome(tmp_path / "chrome-profile") as driver:
        wait = WebDriverWait(driver, 60, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
        driver.get(server.url)
        password = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "input[type=password]"))
        assert SECRET_PROJECT not in driver.find_element(By.TAG_NAME, "body").text
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "auth-sign-in.png"))
        driver.find_element(By.CSS_SELECTOR, "input[type=text], input:not([type])").send_keys(USER)
        password.send_keys(PASSWORD)
        next(b for b in driver.find_elements(By.TAG_NAME, "button") if b.text.strip().lower() == "login").click()
        wait.until(lambda d: SECRET_PROJECT in d.find_element(By.ID, "projects-table").text)
        wait.until(lambda d: f"Signed in as {USER}" in d.find_element(By.ID, "signed-in").text)
        driver.save_screenshot(str(ARTIFACTS / "auth-signed-in.png"))


def test_https_with_a_certificate(tmp_path: Path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True, timeout=60)
    srv = Server(tmp_path / "workspace", tmp_path, "--no-demo", "--ssl-keyfile", str(key), "--ssl-certfile", str(cert))
    srv.url = f"https://127.0.0.1:{srv.port}/"
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False  # the certificate names localhost; requests go to 127.0.0.1
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
    try:
        srv.wait_until_up(opener)
        status, page = request(srv.url, opener=opener)
        assert status == 200 and "stpp" in page
        with pytest.raises((OSError, http.client.HTTPException)):
            http_get(srv.url.replace("https://", "http://"))
    finally:
        srv.stop()
