//! `messenger nats-config`: one nats-server node's configuration for the broker
//! tier on a NATS cluster, rendered from the settings' credentials (the
//! service account `bridge.username`/`bridge.password`, the `[nats]` users and
//! the issuer key of `nats.issuer_seed_file`). `messenger cluster up` writes
//! its nodes' files through the same [`render`].
//!
//! Each node: JetStream, an MQTT listener (optionally MQTT over WebSocket at
//! `/mqtt`), three accounts (the callout account, the messenger account with
//! the service user, the system account), and the auth callout that sends every
//! other sign-in to the bridges.

use anyhow::bail;
use messenger_bridge::config::BrokerAddress;
use messenger_bridge::nats::Issuer;
use messenger_protocol::acl::{nats_permissions, Principal};

use crate::cli::NatsConfigArgs;
use crate::config_failure;
use crate::settings::Settings;

/// The callout account: where the bridges' responders sign in.
const AUTH_ACCOUNT: &str = "AUTH";
/// The system account: where revocation kicks are sent from.
const SYSTEM_ACCOUNT: &str = "SYS";
/// The cluster's name (every node of one cluster must use the same).
const CLUSTER_NAME: &str = "messenger";
/// Most JetStream replicas worth having by default (the MQTT streams' `stream_replicas`).
const MAX_DEFAULT_REPLICAS: usize = 3;

/// Subjects the service account publishes to beyond the topic ACL's: the
/// JetStream API (its durable consumer on the MQTT stream), acknowledgements,
/// and request replies.
const SERVICE_EXTRA_PUBLISH: [&str; 3] = ["$JS.API.>", "$JS.ACK.>", "_INBOX.>"];
/// Subjects the service account subscribes to: replies only (its requests come
/// through JetStream, its events go out over MQTT).
const SERVICE_SUBSCRIBE: [&str; 1] = ["_INBOX.>"];

/// One node's place in the cluster.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// `server_name`: unique in the cluster.
    pub(crate) name: String,
    /// NATS client listener (the bridges connect here).
    pub(crate) listen: BrokerAddress,
    /// Monitoring listener (`/healthz`, `/varz`, ...).
    pub(crate) http: BrokerAddress,
    /// Route listener; only written when there are `routes`.
    pub(crate) cluster: BrokerAddress,
    /// The other nodes' route listeners; none: a single node, no `cluster` block.
    pub(crate) routes: Vec<BrokerAddress>,
    /// MQTT listener (devices connect here).
    pub(crate) mqtt: BrokerAddress,
    /// MQTT over WebSocket listener (path `/mqtt`, plain HTTP), if any.
    pub(crate) websocket: Option<BrokerAddress>,
    /// JetStream's `store_dir`.
    pub(crate) store: String,
    /// `mqtt.stream_replicas`: copies of the MQTT streams (at most the node count).
    pub(crate) replicas: usize,
}

/// The users every node knows, and the key that signs the callout's answers.
#[derive(Clone)]
pub(crate) struct Credentials {
    /// The account devices and the bridges are placed in (`nats.account`).
    pub(crate) account: String,
    /// The service account's user (`bridge.username`).
    pub(crate) bridge_user: String,
    /// Its password (`bridge.password`).
    pub(crate) bridge_password: String,
    /// The callout account's user (`nats.auth_user`).
    pub(crate) auth_user: String,
    /// Its password (`nats.auth_password`).
    pub(crate) auth_password: String,
    /// The system account's user (`nats.system_user`).
    pub(crate) system_user: String,
    /// Its password (`nats.system_password`).
    pub(crate) system_password: String,
    /// The issuer's public account key (`A…`).
    pub(crate) issuer: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("account", &self.account)
            .field("bridge_user", &self.bridge_user)
            .field("auth_user", &self.auth_user)
            .field("system_user", &self.system_user)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The credentials of `settings`, with the issuer key read from
    /// `nats.issuer_seed_file`. An empty password, a missing or bad seed file,
    /// an account or user name nats-server cannot take: bad configuration
    /// naming the key.
    pub(crate) fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let nats = &settings.nats;
        let mut credentials = Self {
            account: nats.account.clone(),
            bridge_user: settings.bridge.username.clone(),
            bridge_password: settings.bridge.password.clone(),
            auth_user: nats.auth_user.clone(),
            auth_password: nats.auth_password.clone(),
            system_user: nats.system_user.clone(),
            system_password: nats.system_password.clone(),
            issuer: String::new(),
        };
        credentials.validate().map_err(config_failure)?;
        let issuer = Issuer::from_file(&nats.issuer_seed_file).map_err(|err| {
            config_failure(anyhow::anyhow!(
                "nats.issuer_seed_file: {err} (--create-issuer-seed writes a new one)"
            ))
        })?;
        credentials.issuer = issuer.public_key().to_owned();
        Ok(credentials)
    }

    /// Checks what nats-server would refuse, or what would leave a user without a password.
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        for (key, value) in [
            ("bridge.password", &self.bridge_password),
            ("nats.auth_password", &self.auth_password),
            ("nats.system_password", &self.system_password),
            ("bridge.username", &self.bridge_user),
            ("nats.auth_user", &self.auth_user),
            ("nats.system_user", &self.system_user),
        ] {
            if value.is_empty() {
                bail!("{key} is empty: every node user needs one (set it in the configuration file or MESSENGER_* environment)");
            }
        }
        let word = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !word(&self.account) || [AUTH_ACCOUNT, SYSTEM_ACCOUNT].contains(&self.account.as_str()) {
            bail!(
                "nats.account must be 1 or more of A-Z a-z 0-9 _ - and neither {AUTH_ACCOUNT} nor {SYSTEM_ACCOUNT} (got {:?})",
                self.account
            );
        }
        if self.bridge_user == self.auth_user
            || self.bridge_user == self.system_user
            || self.auth_user == self.system_user
        {
            bail!("bridge.username, nats.auth_user and nats.system_user must be three different names");
        }
        Ok(())
    }
}

/// `messenger nats-config`: prints one node's configuration.
pub(crate) fn run(settings: &Settings, args: NatsConfigArgs) -> anyhow::Result<()> {
    if args.create_issuer_seed {
        let path = &settings.nats.issuer_seed_file;
        Issuer::create_file(path)
            .map_err(|err| config_failure(anyhow::anyhow!("nats.issuer_seed_file: {err}")))?;
        eprintln!(
            "messenger: wrote a new issuer seed to {} (copy it to every bridge; keep it secret)",
            path.display()
        );
    }
    let credentials = Credentials::from_settings(settings)?;
    let store = match args.store {
        Some(store) => store,
        None => std::env::current_dir()?
            .join("nats")
            .join(&args.name)
            .join("jetstream"),
    };
    let Some(store) = store.to_str() else {
        return Err(config_failure(anyhow::anyhow!(
            "--store must be a UTF-8 path (got {})",
            store.display()
        )));
    };
    let replicas = args
        .replicas
        .map_or_else(|| default_replicas(args.routes.len() + 1), usize::from);
    if replicas > args.routes.len() + 1 {
        return Err(config_failure(anyhow::anyhow!(
            "--replicas {replicas} is more than the {} node(s) this node knows of (itself and --routes)",
            args.routes.len() + 1
        )));
    }
    let node = Node {
        name: args.name,
        listen: args.listen,
        http: args.http,
        cluster: args.cluster,
        routes: args.routes,
        mqtt: args.mqtt,
        websocket: args.websocket,
        store: store.to_owned(),
        replicas,
    };
    print!("{}", render(&node, &credentials));
    Ok(())
}

/// `mqtt.stream_replicas` for a cluster of `nodes`: every node up to three.
pub(crate) fn default_replicas(nodes: usize) -> usize {
    nodes.clamp(1, MAX_DEFAULT_REPLICAS)
}

/// The nats-server configuration of `node`. Every string value is quoted
/// ([`quote`]), so passwords may hold any character.
pub(crate) fn render(node: &Node, credentials: &Credentials) -> String {
    let q = |s: &str| quote(s);
    let address = |a: &BrokerAddress| quote(&a.to_string());
    let list = |items: &[String]| {
        items
            .iter()
            .map(|s| quote(s))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line(
        "# nats-server configuration for messenger (generated by `messenger nats-config`).".into(),
    );
    line("# Holds passwords: keep it readable by the server's user only.".into());
    line(format!("server_name: {}", q(&node.name)));
    line(format!("listen: {}", address(&node.listen)));
    line(format!("http: {}", address(&node.http)));
    line(format!(
        "jetstream {{ store_dir: {}, max_file_store: 1G, max_memory_store: 256M }}",
        q(&node.store)
    ));
    if !node.routes.is_empty() {
        let routes: Vec<String> = node.routes.iter().map(|r| format!("nats://{r}")).collect();
        line(format!(
            "cluster {{ name: {}, listen: {}, routes: [{}] }}",
            q(CLUSTER_NAME),
            address(&node.cluster),
            list(&routes)
        ));
    }
    // ack_wait: a delivery to a device's session that is not acknowledged comes
    // again after 2 s, not the default 30 s. Under a burst the nodes hold some
    // deliveries as sent that the device never gets (docs/BENCHMARKS.md, round 9).
    line("# ack_wait: an unacknowledged delivery to a device comes again after 2 s".into());
    line(format!(
        "mqtt {{ listen: {}, stream_replicas: {}, max_ack_pending: 100, ack_wait: \"2s\" }}",
        address(&node.mqtt),
        node.replicas
    ));
    if let Some(websocket) = &node.websocket {
        line("# MQTT over WebSocket at ws://host:port/mqtt".into());
        line(format!(
            "websocket {{ listen: {}, no_tls: true }}",
            address(websocket)
        ));
    }
    let user =
        |name: &str, password: &str| format!("{{ user: {}, password: {} }}", q(name), q(password));
    let service = nats_permissions(&Principal::Service);
    let publish: Vec<String> = service
        .publish
        .into_iter()
        .chain(SERVICE_EXTRA_PUBLISH.iter().map(|s| (*s).to_owned()))
        .collect();
    let subscribe: Vec<String> = SERVICE_SUBSCRIBE.iter().map(|s| (*s).to_owned()).collect();
    line("accounts {".into());
    line(format!(
        "  {AUTH_ACCOUNT} {{ users: [ {} ] }}",
        user(&credentials.auth_user, &credentials.auth_password)
    ));
    line(format!("  {} {{", credentials.account));
    line("    jetstream: enabled".into());
    line(format!(
        "    users: [ {{ user: {}, password: {}, permissions: {{",
        q(&credentials.bridge_user),
        q(&credentials.bridge_password)
    ));
    line(format!("      publish: {{ allow: [{}] }},", list(&publish)));
    line(format!(
        "      subscribe: {{ allow: [{}] }}",
        list(&subscribe)
    ));
    line("    } } ]".into());
    line("  }".into());
    line(format!(
        "  {SYSTEM_ACCOUNT} {{ users: [ {} ] }}",
        user(&credentials.system_user, &credentials.system_password)
    ));
    line("}".into());
    line(format!("system_account: {}", q(SYSTEM_ACCOUNT)));
    line("authorization {".into());
    line("  timeout: 3".into());
    line(format!(
        "  auth_callout {{ issuer: {}, account: {}, auth_users: [{}] }}",
        q(&credentials.issuer),
        q(AUTH_ACCOUNT),
        list(&[
            credentials.auth_user.clone(),
            credentials.bridge_user.clone(),
            credentials.system_user.clone(),
        ])
    ));
    line("}".into());
    out
}

/// `s` as a double-quoted string of the NATS configuration format: `"` and
/// `\` escaped, tab, newline and carriage return as `\t`, `\n`, `\r`, other
/// control characters as `\xXX`; everything else (`$`, `#`, non-ASCII) as is,
/// which a quoted string keeps literally.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> BrokerAddress {
        s.parse().expect("test address")
    }

    fn credentials() -> Credentials {
        Credentials {
            account: "MSG".into(),
            bridge_user: "_bridge".into(),
            bridge_password: "b\"\\$x".into(),
            auth_user: "auth".into(),
            auth_password: "a-pw".into(),
            system_user: "sys".into(),
            system_password: "s-pw".into(),
            issuer: "AISSUER".into(),
        }
    }

    fn node(routes: &[&str], websocket: Option<&str>) -> Node {
        Node {
            name: "n1".into(),
            listen: addr("127.0.0.1:4222"),
            http: addr("127.0.0.1:8222"),
            cluster: addr("10.0.0.1:6222"),
            routes: routes.iter().map(|r| addr(r)).collect(),
            mqtt: addr("0.0.0.0:1883"),
            websocket: websocket.map(addr),
            store: "/var/lib/nats/n1".into(),
            replicas: default_replicas(routes.len() + 1),
        }
    }

    #[test]
    fn quoting_escapes_what_the_format_needs() {
        assert_eq!(quote("plain"), r#""plain""#);
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(quote("t\tn\nr\r"), r#""t\tn\nr\r""#);
        assert_eq!(quote("\u{1}\u{7f}"), r#""\x01\x7f""#);
        assert_eq!(quote("$x #y //z ü"), "\"$x #y //z ü\"");
    }

    #[test]
    fn a_cluster_node_has_every_block() {
        let text = render(
            &node(&["10.0.0.2:6222", "10.0.0.3:6222"], Some("0.0.0.0:8080")),
            &credentials(),
        );
        for expected in [
            "server_name: \"n1\"\n",
            "listen: \"127.0.0.1:4222\"\n",
            "http: \"127.0.0.1:8222\"\n",
            "jetstream { store_dir: \"/var/lib/nats/n1\", max_file_store: 1G, max_memory_store: 256M }\n",
            "cluster { name: \"messenger\", listen: \"10.0.0.1:6222\", routes: [\"nats://10.0.0.2:6222\", \"nats://10.0.0.3:6222\"] }\n",
            "mqtt { listen: \"0.0.0.0:1883\", stream_replicas: 3, max_ack_pending: 100, ack_wait: \"2s\" }\n",
            "websocket { listen: \"0.0.0.0:8080\", no_tls: true }\n",
            "  AUTH { users: [ { user: \"auth\", password: \"a-pw\" } ] }\n",
            "  MSG {\n    jetstream: enabled\n",
            "users: [ { user: \"_bridge\", password: \"b\\\"\\\\$x\", permissions: {",
            "publish: { allow: [\"chat.*.inbox\", \"chat.*.dev.*\", \"status.*\", \"presence.*.*\", \"$JS.API.>\", \"$JS.ACK.>\", \"_INBOX.>\"] },",
            "subscribe: { allow: [\"_INBOX.>\"] }",
            "  SYS { users: [ { user: \"sys\", password: \"s-pw\" } ] }\n",
            "system_account: \"SYS\"\n",
            "  timeout: 3\n",
            "auth_callout { issuer: \"AISSUER\", account: \"AUTH\", auth_users: [\"auth\", \"_bridge\", \"sys\"] }",
        ] {
            assert!(text.contains(expected), "{expected:?} missing from:\n{text}");
        }
        assert_eq!(text.matches('{').count(), text.matches('}').count());
    }

    #[test]
    fn a_single_node_has_no_cluster_block_and_one_replica() {
        let text = render(&node(&[], None), &credentials());
        assert!(!text.contains("cluster {"), "{text}");
        assert!(!text.contains("websocket"), "{text}");
        assert!(text.contains("stream_replicas: 1,"), "{text}");
    }

    #[test]
    fn replicas_default_to_the_node_count_up_to_three() {
        let got: Vec<usize> = (1..=5).map(default_replicas).collect();
        assert_eq!(got, [1, 2, 3, 3, 3]);
    }

    #[test]
    fn credentials_nats_server_cannot_take_are_refused_naming_the_key() {
        assert!(credentials().validate().is_ok());
        type Edit = fn(&mut Credentials);
        let cases: [(Edit, &str); 6] = [
            (|c| c.bridge_password.clear(), "bridge.password"),
            (|c| c.auth_password.clear(), "nats.auth_password"),
            (|c| c.system_password.clear(), "nats.system_password"),
            (|c| c.account = "M SG".into(), "nats.account"),
            (|c| c.account = "SYS".into(), "nats.account"),
            (|c| c.auth_user = "sys".into(), "nats.auth_user"),
        ];
        for (edit, key) in cases {
            let mut c = credentials();
            edit(&mut c);
            let err = format!("{:#}", c.validate().unwrap_err());
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn the_debug_form_shows_no_password() {
        let shown = format!("{:?}", credentials());
        assert!(
            !shown.contains("a-pw") && !shown.contains("s-pw"),
            "{shown}"
        );
    }
}
