"""The status page in a real browser: headless Chromium (the Debian package) loads `/` from a running server;
the test checks the rendered text and keeps a screenshot (tests/artifacts/service-status.png)."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from service_helpers import Server, make_token, train_tiny, wait_done
from unlearnkit.sisa import SisaModel

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).parent / "artifacts"


def chromium(tmp_path: Path, url: str, *mode: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1100,1000",
            *mode,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium); CI installs it")
def test_status_page_in_headless_chromium(tmp_path):
    model = train_tiny(tmp_path / "model")
    token = make_token(model, "admin", "browser")
    server = Server(model).start()
    try:
        with server.client(token) as http:
            prov_ids = [int(i) for i in SisaModel.open(model).provenance.members[0][:3]]
            assert (
                http.post(
                    "/v1/deletions",
                    json={"ids": prov_ids, "mode": "approx"},
                    headers={"Idempotency-Key": "browser-<b>req"},
                ).status_code
                == 202
            )
            wait_done(http, "browser-<b>req")
        # a browser sends the token as the Basic password after the server's challenge
        url = f"http://user:{token}@127.0.0.1:{server.port}/"
        dom = chromium(tmp_path, url, "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom.stdout))
        assert "unlearnkit deletion service" in text
        assert "Serving version 1" in text and "0 request(s) waiting or running" in text
        assert "browser-&lt;b&gt;req done approx 3 0 → 1" in text  # escaped, not rendered as HTML
        assert "<b>req" not in dom.stdout
        assert re.search(r"shard pending approximate ids 0 3 1 0", text), text
        assert 'href="/v1/deletions/browser-%3Cb%3Ereq/receipt"' in dom.stdout
        denied = chromium(tmp_path / "anonymous", f"http://127.0.0.1:{server.port}/", "--dump-dom")
        assert "Serving version" not in denied.stdout  # no token: the page is not shown
        assert "no API token" in denied.stdout or "ERR_INVALID_AUTH_CREDENTIALS" in denied.stderr
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "service-status.png"
        shot.unlink(missing_ok=True)
        result = chromium(tmp_path, url, f"--screenshot={shot}")
        assert result.returncode == 0 and shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert shot.stat().st_size > 5000
    finally:
        server.stop()
