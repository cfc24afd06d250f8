//! The web client (issue 14) through the real `messenger serve`: the page's
//! files and headers over HTTP, and two users chatting in real headless
//! Chromium sessions driven over WebDriver (chromedriver on a free loopback
//! port, one browser profile per user).
//!
//! The browser tests need Debian's `chromium` and `chromium-driver` (`.ci/run`
//! installs them). Without them they fail, saying what is missing: a browser
//! test that skipped would pass without having run.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::net::TcpStream;

use crate::util::process::{free_addr, free_addr_below_ephemeral, Messenger, Server};
use crate::util::server::{on_both_engines, Backend};
use crate::util::{Transport, PATIENCE};

/// How long a wait on the page may take: sign-in hashes a password, and the
/// browser reconnects once a second after the server comes back.
const PAGE_PATIENCE: Duration = Duration::from_secs(30);

/// How often a wait on the page looks again.
const POLL: Duration = Duration::from_millis(50);

/// A server storing where `backend` says, with alice, bob and carol (password
/// `pw`), whose web listener accepts, on
/// ports below the ephemeral range (the browsers keep dialling them while the
/// server is restarted).
async fn server(backend: Backend) -> (Messenger, Server) {
    let messenger = Messenger::on(backend);
    for user in ["alice", "bob", "carol"] {
        messenger
            .run(&["user", "add", user, "--password", "pw"])
            .await
            .ok();
    }
    let server = start(
        &messenger,
        free_addr_below_ephemeral(),
        free_addr_below_ephemeral(),
    )
    .await;
    (messenger, server)
}

/// `messenger serve` on these addresses, once its web listener accepts too.
async fn start(messenger: &Messenger, mqtt: SocketAddr, ws: SocketAddr) -> Server {
    let server = messenger.serve_on(mqtt, ws).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while TcpStream::connect(server.ws).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the web listener did not come up:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server
}

on_both_engines!(the_page_and_its_files_are_served_with_types_validators_and_a_policy);
async fn the_page_and_its_files_are_served_with_types_validators_and_a_policy(backend: Backend) {
    let (_messenger, server) = server(backend).await;
    let base = format!("http://{}", server.ws);
    let http = reqwest::Client::new();

    let page = http.get(format!("{base}/")).send().await.expect("GET /");
    assert_eq!(page.status(), 200);
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&page, "cache-control"), "no-cache");
    assert_eq!(header(&page, "x-content-type-options"), "nosniff");
    let policy = header(&page, "content-security-policy");
    assert!(policy.contains("default-src 'none'"), "{policy}");
    assert!(policy.contains("script-src 'self';"), "{policy}");
    assert!(
        policy.contains(&format!("connect-src 'self' ws://{}", server.ws)),
        "{policy}"
    );
    assert!(!policy.contains("unsafe-inline") && !policy.contains("unsafe-eval"));
    let etag = header(&page, "etag");
    let html = page.text().await.expect("page body");
    assert!(html.contains("<script type=\"module\" src=\"/app.js\"></script>"));
    // No inline script: every <script> loads a file.
    assert_eq!(
        html.matches("<script").count(),
        html.matches("<script src=\"/")
            .count()
            .saturating_add(html.matches("<script type=\"module\" src=\"/").count())
    );

    // The same file again is a 304 while it has not changed.
    let again = http
        .get(format!("{base}/"))
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("GET / again");
    assert_eq!(again.status(), 304);

    for (path, media_type) in [
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/connection.js", "text/javascript; charset=utf-8"),
        ("/style.css", "text/css; charset=utf-8"),
        ("/vendor/mqtt.min.js", "text/javascript; charset=utf-8"),
        ("/icon.svg", "image/svg+xml"),
    ] {
        let r = http.get(format!("{base}{path}")).send().await.expect(path);
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(header(&r, "content-type"), media_type, "{path}");
        assert!(!header(&r, "etag").is_empty(), "{path}");
    }
    // Anything else is 404; another method on the page is 405 and serves nothing.
    for path in [
        "/index.html",
        "/app.js/",
        "/vendor/",
        "/../Cargo.toml",
        "/web/app.js",
    ] {
        let r = http.get(format!("{base}{path}")).send().await.expect(path);
        assert_eq!(r.status(), 404, "{path}");
    }
    let post = http.post(format!("{base}/")).send().await.expect("POST /");
    assert_eq!(post.status(), 405);
    assert_eq!(header(&post, "allow"), "GET, HEAD");
    // A Host header that would add to the policy is left out of it.
    let odd = http
        .get(format!("{base}/"))
        .header("host", "evil; script-src *")
        .send()
        .await
        .expect("GET / with an odd Host");
    let policy = header(&odd, "content-security-policy");
    assert!(
        policy.contains("connect-src 'self';") && !policy.contains('*'),
        "{policy}"
    );
}

// ---------------------------------------------------------------- browsers

/// Chromium and its WebDriver.
struct Tools {
    chromium: PathBuf,
    chromedriver: PathBuf,
}

/// The first of `names` found on `PATH`.
fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    names
        .iter()
        .flat_map(|name| dirs.iter().map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// The tools; a missing one fails the test (`.ci/run` installs both): a browser
/// test that skipped would pass without having run.
fn tools() -> Tools {
    let chromium = find_program(&["chromium", "chromium-browser"]);
    let chromedriver = find_program(&["chromedriver"]);
    match (chromium, chromedriver) {
        (Some(chromium), Some(chromedriver)) => Tools {
            chromium,
            chromedriver,
        },
        (chromium, chromedriver) => {
            let missing = [
                chromium.is_none().then_some("chromium"),
                chromedriver
                    .is_none()
                    .then_some("chromedriver (chromium-driver)"),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" and ");
            panic!("not installed: {missing} (.ci/run installs chromium and chromium-driver)")
        }
    }
}

/// A chromedriver on a free loopback port; killed when dropped.
struct Driver {
    child: Child,
    url: String,
    chromium: PathBuf,
}

impl Driver {
    async fn start(tools: &Tools, log: &Path) -> Self {
        let addr = free_addr();
        // A process group of its own: dropping the driver kills the browsers it
        // started too, even when the test panicked before closing them.
        let child = Command::new(&tools.chromedriver)
            .process_group(0)
            .arg(format!("--port={}", addr.port()))
            .arg("--allowed-ips=127.0.0.1")
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning chromedriver");
        let mut driver = Self {
            child,
            url: format!("http://{addr}"),
            chromium: tools.chromium.clone(),
        };
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while TcpStream::connect(addr).await.is_err() {
            if let Ok(Some(status)) = driver.child.try_wait() {
                panic!("chromedriver exited with {status}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not listen on {addr}"
            );
            tokio::time::sleep(POLL).await;
        }
        driver
    }

    /// A new browser with its own profile (its own localStorage) in `profile`.
    async fn browser(&self, name: &'static str, profile: &Path) -> Page {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": self.chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--disable-extensions",
                    "--disable-background-timer-throttling",
                    "--disable-renderer-backgrounding",
                    "--enable-logging",
                    "--v=0",
                    "--window-size=1280,800",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a browser session from chromedriver");
        Page {
            name,
            client,
            profile: profile.to_owned(),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and every browser process under it.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One user's browser.
struct Page {
    name: &'static str,
    client: Client,
    profile: PathBuf,
}

impl Page {
    /// Runs `script` (a function body) with `args`.
    async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|err| panic!("{}: script failed: {err}\n{script}", self.name))
    }

    /// What the page shows, and the console lines Chromium logged, for a failure message.
    async fn dump(&self) -> String {
        let text = self
            .client
            .execute("return document.body.innerText", vec![])
            .await
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .unwrap_or_else(|err| format!("(no page text: {err})"));
        let console = std::fs::read_to_string(self.profile.join("chrome_debug.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("CONSOLE") || l.contains("Content Security Policy"))
            .collect::<Vec<_>>()
            .join("\n");
        format!("--- {} shows:\n{text}\n--- console:\n{console}", self.name)
    }

    /// Waits until `condition` (a JavaScript expression) is true.
    async fn wait(&self, condition: &str, what: &str) {
        let script = format!("return !!({condition});");
        let deadline = tokio::time::Instant::now() + PAGE_PATIENCE;
        loop {
            if self.js(&script, vec![]).await == Value::Bool(true) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{}: not within {PAGE_PATIENCE:?}: {what}\n{}",
                    self.name,
                    self.dump().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("{}: no {css}: {err}", self.name))
    }

    async fn type_into(&self, css: &str, text: &str) {
        self.find(css)
            .await
            .send_keys(text)
            .await
            .unwrap_or_else(|err| panic!("{}: typing into {css}: {err}", self.name));
    }

    /// Replaces the text of the input `css` with `text`.
    async fn retype(&self, css: &str, text: &str) {
        self.find(css)
            .await
            .clear()
            .await
            .unwrap_or_else(|err| panic!("{}: clearing {css}: {err}", self.name));
        self.type_into(css, text).await;
    }

    /// The session the page keeps across reloads (`null` when signed out).
    async fn kept_session(&self) -> Value {
        self.js("return localStorage.getItem('messenger.session');", vec![])
            .await
    }

    /// Clicks the element; again if the page replaced it between finding and clicking.
    async fn click(&self, css: &str) {
        let deadline = tokio::time::Instant::now() + PAGE_PATIENCE;
        loop {
            match self.find(css).await.click().await {
                Ok(()) => return,
                Err(err) if err.to_string().contains("stale element") => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{}: {css} kept going stale",
                        self.name
                    );
                    tokio::time::sleep(POLL).await;
                }
                Err(err) => panic!("{}: clicking {css}: {err}", self.name),
            }
        }
    }

    /// Opens the page and signs in.
    async fn sign_in(&self, base: &str, user: &str, password: &str) {
        self.client.goto(base).await.expect("opening the page");
        self.wait(
            "!document.getElementById('signin-view').hidden",
            "the sign-in form",
        )
        .await;
        self.type_into("#signin-user", user).await;
        self.type_into("#signin-password", password).await;
        self.click("#signin-submit").await;
        self.wait_online().await;
    }

    async fn wait_online(&self) {
        self.wait(
            "document.getElementById('conn').dataset.state === 'online'",
            "connected",
        )
        .await;
    }

    /// Types a message into the open conversation and sends it.
    async fn send(&self, text: &str) {
        self.type_into("#compose-text", text).await;
        self.click("#send").await;
    }

    /// How many messages of the open conversation have exactly this text.
    async fn count(&self, text: &str) -> u64 {
        self.js(
            "return [...document.querySelectorAll('#messages li.msg .body')]
                .filter(b => b.textContent === arguments[0]).length;",
            vec![json!(text)],
        )
        .await
        .as_u64()
        .unwrap_or_default()
    }

    /// Waits until a message with this text is shown.
    async fn wait_message(&self, text: &str) {
        let condition = format!(
            "[...document.querySelectorAll('#messages li.msg .body')].some(b => b.textContent === {})",
            json!(text)
        );
        self.wait(&condition, &format!("the message {text:?}"))
            .await;
    }

    /// Waits until the own message with this text has this status.
    async fn wait_status(&self, text: &str, status: &str) {
        let condition = format!(
            "[...document.querySelectorAll('#messages li.msg.mine')].some(li =>
                li.querySelector('.body')?.textContent === {} &&
                li.querySelector('.status')?.dataset.status === {})",
            json!(text),
            json!(status)
        );
        self.wait(&condition, &format!("{text:?} shown as {status}"))
            .await;
    }

    /// Opens the action row of the message with this text and clicks one of
    /// its buttons (`data-action`, and `data-emoji` for a reaction) as a user would.
    async fn act_on(&self, text: &str, action: &str, emoji: Option<&str>) {
        let found = self
            .js(
                "const li = [...document.querySelectorAll('#messages li.msg')]
                    .find(li => li.querySelector('.body')?.textContent === arguments[0]);
                if (!li) return false;
                const actions = li.querySelector('.actions');
                if (actions.hidden) li.querySelector('[data-action=menu]').click();
                const button = [...actions.querySelectorAll('[data-action=' + arguments[1] + ']')]
                    .find(b => arguments[2] === null || b.dataset.emoji === arguments[2]);
                document.querySelectorAll('[data-test]').forEach(n => n.removeAttribute('data-test'));
                if (!button) return false;
                button.dataset.test = 'target';
                return true;",
                vec![json!(text), json!(action), json!(emoji)],
            )
            .await;
        assert_eq!(found, json!(true), "{}: no {action} on {text:?}", self.name);
        self.click("[data-test=target]").await;
    }

    /// Accepts the confirm() the last click opened.
    async fn confirm(&self) {
        self.client
            .accept_alert()
            .await
            .unwrap_or_else(|err| panic!("{}: no dialog to accept: {err}", self.name));
    }

    /// A screenshot at this window size, written to `path`.
    async fn screenshot(&self, width: u32, height: u32, path: &Path) {
        self.client
            .set_window_size(width, height)
            .await
            .expect("window size");
        let inner = self.js("return window.innerWidth;", vec![]).await;
        let inner = inner.as_u64().unwrap_or_default();
        assert!(
            inner <= u64::from(width) && inner + 40 >= u64::from(width),
            "{}: asked for {width} px, the page is {inner} px wide",
            self.name
        );
        // Let layout settle on the new size: wait for a frame to be drawn.
        self.client
            .execute_async(
                "const done = arguments[0]; requestAnimationFrame(() => requestAnimationFrame(() => done(true)));",
                vec![],
            )
            .await
            .expect("a frame");
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(path, png).expect("writing the screenshot");
    }
}

/// Where the test run writes its screenshots.
fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

on_both_engines!(two_people_chat_in_browsers_through_a_restart);
async fn two_people_chat_in_browsers_through_a_restart(backend: Backend) {
    let tools = tools();
    let (messenger, mut server) = server(backend).await;
    let base = format!("http://{}/", server.ws);
    let profiles = TempDir::new().expect("profiles");
    let driver = Driver::start(&tools, &profiles.path().join("chromedriver.log")).await;
    let alice = driver
        .browser("alice", &profiles.path().join("alice"))
        .await;
    let bob = driver.browser("bob", &profiles.path().join("bob")).await;

    alice.sign_in(&base, "alice", "pw").await;
    bob.sign_in(&base, "bob", "pw").await;
    // The page keeps a device token, never the password.
    let kept = alice
        .js(
            "return JSON.stringify(Object.assign({}, localStorage));",
            vec![],
        )
        .await;
    let kept = kept.as_str().unwrap_or_default();
    assert!(kept.contains("mtk_"), "no device token kept: {kept}");
    assert!(!kept.contains("\"pw\"") && !kept.contains(":pw"), "{kept}");

    // Alice starts the chat; her message goes pending -> sent -> delivered (Bob's
    // page is open, but not on this conversation) -> read (once Bob opens it).
    alice.type_into("#new-chat-user", "bob").await;
    alice.click("#new-chat button[type=submit]").await;
    alice
        .wait(
            "document.getElementById('conv-title').textContent === 'bob'",
            "the chat with bob",
        )
        .await;
    alice.send("hello bob").await;
    alice.wait_status("hello bob", "delivered").await;
    bob.wait(
        "document.querySelector('#conv-list button[data-conv=\"dm:alice:bob\"] .badge')?.textContent === '1'",
        "one unread message from alice in the list",
    )
    .await;
    bob.click("#conv-list button[data-conv=\"dm:alice:bob\"]")
        .await;
    bob.wait_message("hello bob").await;
    alice.wait_status("hello bob", "read").await;
    // Each sees the other online, in the list and above the conversation.
    bob.wait(
        "document.getElementById('conv-sub').textContent === 'online'",
        "alice shown online",
    )
    .await;
    alice
        .wait(
            "document.querySelector('#conv-list button[data-conv=\"dm:alice:bob\"] .presence')?.textContent === 'online'",
            "bob shown online in the list",
        )
        .await;

    // Typing shows on the other side, both ways.
    bob.wait(
        "document.getElementById('typing').textContent === ''",
        "no one typing yet",
    )
    .await;
    alice.type_into("#compose-text", "are you th").await;
    bob.wait(
        "document.getElementById('typing').textContent === 'alice is typing…'",
        "alice typing",
    )
    .await;
    bob.type_into("#compose-text", "y").await;
    alice
        .wait(
            "document.getElementById('typing').textContent === 'bob is typing…'",
            "bob typing",
        )
        .await;
    bob.type_into("#compose-text", "es, hi alice").await;
    bob.click("#send").await;
    alice.wait_message("yes, hi alice").await;
    alice.type_into("#compose-text", "ere?").await;
    alice.click("#send").await;
    bob.wait_message("are you there?").await;

    // Bob reloads: the conversation comes back from history.
    bob.client.refresh().await.expect("reload");
    bob.wait_online().await;
    for text in ["hello bob", "yes, hi alice", "are you there?"] {
        bob.wait_message(text).await;
    }

    // The server goes away; Alice's message waits in her outbox, then goes out
    // once the server is back, and Bob gets it exactly once.
    let (mqtt, ws) = (server.mqtt, server.ws);
    server.kill();
    alice
        .wait(
            "document.getElementById('conn').dataset.state !== 'online'",
            "alice sees she is offline",
        )
        .await;
    let offline = "sent while the server was down";
    alice.send(offline).await;
    alice.wait_status(offline, "pending").await;
    // Kept in the browser (with the request id it will be retried with), not only on screen.
    let queued = alice
        .js(
            "return JSON.parse(localStorage.getItem('messenger.alice.outbox') || '[]')
                .filter(e => e.body === arguments[0]).map(e => e.id);",
            vec![json!(offline)],
        )
        .await;
    let queued_id = queued[0].as_str().unwrap_or_default().to_owned();
    assert_eq!(queued.as_array().map(Vec::len), Some(1), "{queued}");
    let server = start(&messenger, mqtt, ws).await;
    bob.wait_message(offline).await;
    bob.wait(
        "document.getElementById('conv-sub').textContent === 'online'",
        "alice shown online after the restart, before a reload",
    )
    .await;
    alice.wait_status(offline, "read").await;
    assert_eq!(bob.count(offline).await, 1, "{}", bob.dump().await);
    assert_eq!(alice.count(offline).await, 1, "{}", alice.dump().await);
    // Bob got it under the id Alice's outbox kept, and the outbox is empty again.
    let shown = bob
        .js(
            "return [...document.querySelectorAll('#messages li.msg')]
                .find(li => li.querySelector('.body')?.textContent === arguments[0])?.dataset.key;",
            vec![json!(offline)],
        )
        .await;
    assert_eq!(shown, json!(format!("alice/{queued_id}")));
    alice
        .wait(
            "JSON.parse(localStorage.getItem('messenger.alice.outbox') || '[]').length === 0",
            "an empty outbox",
        )
        .await;
    // Bob reloads again: still once, now from history.
    bob.client.refresh().await.expect("reload");
    bob.wait_online().await;
    bob.wait_message(offline).await;
    assert_eq!(bob.count(offline).await, 1, "{}", bob.dump().await);
    bob.wait(
        "document.getElementById('conv-sub').textContent === 'online'",
        "alice shown online after the restart",
    )
    .await;

    // A body that is markup shows as text: no element made of it, no script run.
    let hostile = "<img src=x onerror=alert(1)>";
    alice.send(hostile).await;
    bob.wait_message(hostile).await;
    alice.wait_status(hostile, "read").await;
    let images = bob
        .js(
            "return document.querySelectorAll('#messages img:not(.inline-image)').length;",
            vec![],
        )
        .await;
    assert_eq!(images, json!(0));
    assert!(
        bob.client.get_alert_text().await.is_err(),
        "an alert is open on bob's page"
    );

    // While Bob's page is hidden (the browser says so through `document.hidden`,
    // overridden here: a headless window cannot be put behind another), a new
    // message is a notification and is not read; shown again, it is read.
    bob.js(
        "window.notes = [];
        window.Notification = class {
            constructor(title, options) { window.notes.push([title, options.body]); }
            static get permission() { return 'granted'; }
            static requestPermission() { return Promise.resolve('granted'); }
        };
        Object.defineProperty(document, 'hidden', { get: () => true, configurable: true });
        Object.defineProperty(document, 'visibilityState', { get: () => 'hidden', configurable: true });
        document.dispatchEvent(new Event('visibilitychange'));",
        vec![],
    )
    .await;
    alice.send("are you still there?").await;
    bob.wait(
        "window.notes.some(([t, b]) => t === 'alice' && b === 'are you still there?')",
        "a notification",
    )
    .await;
    alice.wait_status("are you still there?", "delivered").await;
    assert_eq!(bob.count("are you still there?").await, 1);
    bob.js(
        "delete document.hidden; delete document.visibilityState;
        document.dispatchEvent(new Event('visibilitychange'));",
        vec![],
    )
    .await;
    alice.wait_status("are you still there?", "read").await;
    assert_eq!(
        bob.js("return window.notes.length;", vec![]).await,
        json!(1),
        "one notification, only while hidden"
    );

    // Screenshots at desktop and phone width, of Bob's side of the conversation.
    let dir = screenshot_dir();
    bob.screenshot(1280, 800, &dir.join("web-desktop.png"))
        .await;
    bob.screenshot(360, 740, &dir.join("web-phone.png")).await;
    eprintln!("screenshots in {}", dir.display());

    alice.client.close().await.expect("closing alice's browser");
    bob.client.close().await.expect("closing bob's browser");
    drop(server);
}

/// A 1×1 PNG image.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8, 0xcf, 0xc0, 0xf0,
    0x1f, 0x00, 0x05, 0x00, 0x01, 0xff, 0x89, 0x99, 0x3d, 0x1d, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

on_both_engines!(replies_edits_reactions_deletions_files_groups_paging_and_sign_out_in_browsers);
async fn replies_edits_reactions_deletions_files_groups_paging_and_sign_out_in_browsers(
    backend: Backend,
) {
    let tools = tools();
    let (_messenger, server) = server(backend).await;
    let base = format!("http://{}/", server.ws);
    let profiles = TempDir::new().expect("profiles");
    let driver = Driver::start(&tools, &profiles.path().join("chromedriver.log")).await;
    let alice = driver
        .browser("alice", &profiles.path().join("alice"))
        .await;
    let bob = driver.browser("bob", &profiles.path().join("bob")).await;

    // Bad sign-ins say what is wrong and keep nothing.
    alice.client.goto(&base).await.expect("opening the page");
    alice.type_into("#signin-user", "Alice!").await;
    alice.type_into("#signin-password", "pw").await;
    alice.click("#signin-submit").await;
    alice
        .wait(
            "document.getElementById('signin-error').textContent.startsWith('A user id is')",
            "a malformed user id refused by the page",
        )
        .await;
    alice.retype("#signin-user", "alice").await;
    alice.retype("#signin-password", "wrong").await;
    alice.click("#signin-submit").await;
    alice
        .wait(
            "document.getElementById('signin-error').textContent === 'wrong user id or password'",
            "a wrong password refused",
        )
        .await;
    assert_eq!(alice.kept_session().await, Value::Null);
    // With `limits.max_devices` (10) of alice's devices connected, the right
    // password is refused with CONNACK 5: the page says why, keeps nothing.
    let mut held = Vec::new();
    for n in 0..10 {
        let device = server
            .device(Transport::Tcp, &format!("alice:held{n}"), "pw")
            .connect()
            .await
            .unwrap_or_else(|err| panic!("alice's device {n} signs in: {err}"));
        held.push(device);
    }
    alice.retype("#signin-password", "pw").await;
    alice.click("#signin-submit").await;
    alice
        .wait(
            "document.getElementById('signin-error').textContent.startsWith('not allowed now: too many of your devices')",
            "too many devices, said as such",
        )
        .await;
    assert_eq!(alice.kept_session().await, Value::Null);
    drop(held);
    // Until the broker has seen them go, the next sign-in would be refused too.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (_, metrics) = crate::admin::get(server.admin, "/metrics").await;
        if metrics
            .lines()
            .any(|l| l == "messenger_connected_devices 0")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "alice's devices still counted:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    alice.retype("#signin-password", "pw").await;
    alice.click("#signin-submit").await;
    alice.wait_online().await;
    bob.sign_in(&base, "bob", "pw").await;

    // A message to someone who does not exist is refused, and says so.
    alice.type_into("#new-chat-user", "nobody").await;
    alice.click("#new-chat button[type=submit]").await;
    alice.send("anyone there?").await;
    alice.wait_status("anyone there?", "failed").await;
    alice
        .wait(
            "JSON.parse(localStorage.getItem('messenger.alice.outbox') || '[]').length === 0",
            "the refused send out of the outbox",
        )
        .await;

    alice.type_into("#new-chat-user", "bob").await;
    alice.click("#new-chat button[type=submit]").await;
    alice.send("dinner at 8?").await;
    alice.wait_status("dinner at 8?", "delivered").await;
    bob.click("#conv-list button[data-conv=\"dm:alice:bob\"]")
        .await;
    bob.wait_message("dinner at 8?").await;

    // A reply quotes what it answers, on both sides.
    bob.act_on("dinner at 8?", "reply", None).await;
    bob.send("see you there").await;
    let quoted = "[...document.querySelectorAll('#messages li.msg')].some(li =>
        li.querySelector('.body')?.textContent === 'see you there' &&
        li.querySelector('.quote')?.textContent === '↪ alice: dinner at 8?')";
    alice.wait(quoted, "the reply quoting alice").await;
    bob.wait(quoted, "the reply quoting alice").await;

    // An edit replaces the text for both and says so.
    alice.act_on("dinner at 8?", "edit", None).await;
    alice
        .wait(
            "document.getElementById('compose-text').value === 'dinner at 8?'",
            "the text to edit in the composer",
        )
        .await;
    alice
        .js(
            "document.getElementById('compose-text').value = '';",
            vec![],
        )
        .await;
    alice.send("dinner at 9?").await;
    bob.wait_message("dinner at 9?").await;
    assert_eq!(bob.count("dinner at 8?").await, 0);
    bob.wait(
        "[...document.querySelectorAll('#messages li.msg')].some(li =>
            li.querySelector('.body')?.textContent === 'dinner at 9?' && li.querySelector('.edited'))",
        "marked edited",
    )
    .await;

    // A reaction shows on both sides; the same one again takes it back.
    bob.act_on("dinner at 9?", "react", Some("👍")).await;
    let reacted = "[...document.querySelectorAll('#messages li.msg')].some(li =>
        li.querySelector('.body')?.textContent === 'dinner at 9?' &&
        li.querySelector('.reaction')?.textContent === '👍 1')";
    alice.wait(reacted, "bob's reaction").await;
    bob.wait(reacted, "bob's reaction").await;
    bob.act_on("dinner at 9?", "react", Some("👍")).await;
    alice
        .wait(
            "![...document.querySelectorAll('#messages li.msg .reaction')].length",
            "the reaction taken back",
        )
        .await;

    // A deletion (after a confirmation) leaves a marker and no text.
    alice.act_on("dinner at 9?", "delete", None).await;
    alice.confirm().await;
    bob.wait(
        "[...document.querySelectorAll('#messages li.msg .body.deleted')].length === 1",
        "the message shown deleted",
    )
    .await;
    assert_eq!(bob.count("dinner at 9?").await, 0);

    // A send still in the outbox when the page is reloaded (as a closed tab or a
    // dropped network leaves it) goes out after the reload, with its own id, once.
    alice
        .js(
            "localStorage.setItem('messenger.alice.outbox', JSON.stringify([
                {id: 'before-reload-1', conv: 'dm:alice:bob', body: 'queued before a reload', created: Date.now()}]));",
            vec![],
        )
        .await;
    alice.client.refresh().await.expect("reload");
    alice.wait_online().await;
    bob.wait_message("queued before a reload").await;
    alice.wait_status("queued before a reload", "read").await;
    assert_eq!(
        bob.js(
            "return [...document.querySelectorAll('#messages li.msg')]
                .filter(li => li.dataset.key === 'alice/before-reload-1').length;",
            vec![]
        )
        .await,
        json!(1)
    );

    // A file: uploaded with the device token, sent as an attachment, shown inline to Bob.
    let image = profiles.path().join("dot.png");
    std::fs::write(&image, PNG).expect("writing the image");
    alice
        .type_into("#attach", &image.display().to_string())
        .await;
    bob.wait(
        "[...document.querySelectorAll('#messages img.inline-image')].some(img =>
            img.alt === 'dot.png' && img.complete && img.naturalWidth === 1 && !img.hidden)",
        "the image shown inline",
    )
    .await;
    bob.wait(
        "[...document.querySelectorAll('#messages button.file')].some(b => b.textContent === '📎 dot.png (70 B)')",
        "the attachment's name and size",
    )
    .await;

    // A group: created by alice with bob, carol added; bob sees both and leaves.
    alice.click("#new-group-box summary").await;
    alice.type_into("#new-group-name", "trip").await;
    alice.type_into("#new-group-members", "bob").await;
    alice.click("#new-group button[type=submit]").await;
    alice
        .wait(
            "document.getElementById('conv-title').textContent === 'trip'",
            "the new group open",
        )
        .await;
    alice.type_into("#add-member-user", "carol").await;
    alice.click("#add-member button[type=submit]").await;
    alice
        .wait(
            "[...document.querySelectorAll('#messages li.system')].some(li => li.textContent === 'alice added carol')",
            "carol added",
        )
        .await;
    alice.send("packing list?").await;
    bob.wait(
        "[...document.querySelectorAll('#conv-list .name')].some(n => n.textContent === 'trip')",
        "the group in bob's list",
    )
    .await;
    let group = bob
        .js(
            "return [...document.querySelectorAll('#conv-list button[data-conv]')]
                .find(b => b.querySelector('.name').textContent === 'trip').dataset.conv;",
            vec![],
        )
        .await;
    let group = group.as_str().unwrap_or_default().to_owned();
    assert!(group.starts_with("g:"), "{group}");
    bob.click(&format!("#conv-list button[data-conv=\"{group}\"]"))
        .await;
    bob.wait_message("packing list?").await;
    bob.wait(
        "document.getElementById('conv-sub').textContent === 'alice, bob, carol'",
        "the members",
    )
    .await;
    bob.click("#leave").await;
    bob.confirm().await;
    bob.wait(
        "![...document.querySelectorAll('#conv-list .name')].some(n => n.textContent === 'trip')",
        "the group gone from bob's list",
    )
    .await;
    alice
        .wait(
            "[...document.querySelectorAll('#messages li.system')].some(li => li.textContent === 'bob left')",
            "bob left",
        )
        .await;

    // A long conversation comes in pages as Alice scrolls up.
    let mut raw = server
        .device(Transport::Tcp, "alice:raw", "pw")
        .connect()
        .await
        .expect("alice's raw device");
    raw.subscribe(&["chat/alice/dev/raw"]).await;
    for i in 1..=70 {
        let send = json!({"type": "send", "id": format!("old-{i}"), "conv": "dm:alice:carol", "body": format!("old {i}")});
        let ack = raw.reply("alice", send.to_string().as_bytes()).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    alice.type_into("#new-chat-user", "carol").await;
    alice.click("#new-chat button[type=submit]").await;
    alice.wait_message("old 70").await;
    assert_eq!(
        alice.count("old 1").await,
        0,
        "the first page holds the newest only"
    );
    alice
        .js("document.getElementById('messages').scrollTop = 0;", vec![])
        .await;
    alice.wait_message("old 1").await;
    let order = alice
        .js(
            "return [...document.querySelectorAll('#messages li.msg .body')].map(b => b.textContent);",
            vec![],
        )
        .await;
    let expected: Vec<String> = (1..=70).map(|i| format!("old {i}")).collect();
    assert_eq!(order, json!(expected));

    // Sign-out forgets the token and the device id.
    alice.click("#signout").await;
    alice
        .wait(
            "!document.getElementById('signin-view').hidden && !Object.keys(localStorage).length",
            "signed out with nothing kept",
        )
        .await;

    alice.client.close().await.expect("closing alice's browser");
    bob.client.close().await.expect("closing bob's browser");
}
