//! Which devices are connected to the cluster, for presence reconciliation.
//!
//! A node that dies publishes none of its devices' last wills (nor does any
//! other node), so their users would show online until those devices came
//! back. Every so often the bridge asks every node for its MQTT connections
//! (`$SYS.REQ.SERVER.PING.CONNZ`, as the system account) and keeps the client
//! ids; the store's reconciliation then marks offline the devices no node has.
//! A node that stops answering keeps its last list for [`SILENT_POLLS`] polls
//! (a slow answer is not a death), then its devices count as gone. Until a
//! first answer, every device counts as connected.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use messenger_store::Liveness;

/// How many polls a node may miss before its devices count as gone.
const SILENT_POLLS: u32 = 3;
/// How long one poll waits for the nodes' answers.
const ANSWER_WAIT: Duration = Duration::from_millis(500);
/// Most connections a node lists in one answer (the rest come by offset).
const PAGE: usize = 10_000;

/// The MQTT client ids connected to the cluster, by node, as last polled.
#[derive(Default)]
pub(crate) struct Connected {
    /// Node name -> (its client ids, polls since it last answered).
    nodes: RwLock<HashMap<String, (HashSet<String>, u32)>>,
}

impl Connected {
    /// What the store's reconciliation asks: is this client id connected?
    pub(crate) fn liveness(self: &Arc<Self>) -> Liveness {
        let this = self.clone();
        Arc::new(move |client_id: &str| this.is_connected(client_id))
    }

    fn is_connected(&self, client_id: &str) -> bool {
        let nodes = self
            .nodes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        nodes.is_empty()
            || nodes
                .values()
                .any(|(ids, silent)| *silent <= SILENT_POLLS && ids.contains(client_id))
    }

    /// Records one poll's answers (node name -> client ids).
    fn record(&self, answers: HashMap<String, HashSet<String>>) {
        let mut nodes = self
            .nodes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (_, silent) in nodes.values_mut() {
            *silent = silent.saturating_add(1);
        }
        for (node, ids) in answers {
            nodes.insert(node, (ids, 0));
        }
    }
}

/// Polls the nodes every `every` until `shutdown`.
pub(crate) async fn watch(
    system: async_nats::Client,
    connected: Arc<Connected>,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        match poll(&system).await {
            Ok(answers) if !answers.is_empty() => connected.record(answers),
            Ok(_) => {}
            Err(cause) => warn!(%cause, "cannot list the nodes' connections"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// One round of CONNZ requests: every answering node's MQTT client ids.
async fn poll(system: &async_nats::Client) -> Result<HashMap<String, HashSet<String>>, String> {
    #[derive(Deserialize)]
    struct Reply {
        server: Server,
        data: Option<Connz>,
    }
    #[derive(Deserialize)]
    struct Server {
        id: String,
        #[serde(default)]
        name: String,
    }
    #[derive(Deserialize)]
    struct Connz {
        #[serde(default)]
        connections: Vec<Conn>,
        #[serde(default)]
        total: usize,
    }
    #[derive(Deserialize)]
    struct Conn {
        #[serde(default)]
        mqtt_client: Option<String>,
    }
    let mut answers: HashMap<String, HashSet<String>> = HashMap::new();
    let mut offset = 0;
    loop {
        let inbox = system.new_inbox();
        let mut replies = system
            .subscribe(inbox.clone())
            .await
            .map_err(|e| e.to_string())?;
        let filter = json!({"state": 0, "limit": PAGE, "offset": offset}).to_string();
        system
            .publish_with_reply("$SYS.REQ.SERVER.PING.CONNZ", inbox, filter.into())
            .await
            .map_err(|e| e.to_string())?;
        let mut more = false;
        let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
        while let Ok(Some(message)) = tokio::time::timeout_at(deadline, replies.next()).await {
            let Ok(reply) = serde_json::from_slice::<Reply>(&message.payload) else {
                continue;
            };
            let Some(data) = reply.data else { continue };
            more |= data.total > offset + PAGE;
            // By name: a node started again keeps it, not its id.
            let node = if reply.server.name.is_empty() {
                reply.server.id
            } else {
                reply.server.name
            };
            answers.entry(node).or_default().extend(
                data.connections
                    .into_iter()
                    .filter_map(|c| c.mqtt_client.filter(|id| !id.is_empty())),
            );
        }
        if !more {
            return Ok(answers);
        }
        offset += PAGE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_node_keeps_its_devices_for_a_while_then_loses_them() {
        let connected = Arc::new(Connected::default());
        let live = connected.liveness();
        assert!(live("alice:phone"), "before any answer, everyone counts");
        let answer = |pairs: &[(&str, &[&str])]| {
            pairs
                .iter()
                .map(|(node, ids)| {
                    (
                        (*node).to_owned(),
                        ids.iter().map(|s| (*s).to_owned()).collect(),
                    )
                })
                .collect()
        };
        connected.record(answer(&[("n1", &["alice:phone"]), ("n2", &["bob:phone"])]));
        assert!(live("alice:phone") && live("bob:phone"));
        assert!(!live("carol:phone"));
        for _ in 0..SILENT_POLLS {
            connected.record(answer(&[("n2", &["bob:phone"])]));
            assert!(live("alice:phone"), "a slow node is not a dead one");
        }
        connected.record(answer(&[("n2", &["bob:phone"])]));
        assert!(!live("alice:phone"), "n1 has been silent too long");
        assert!(live("bob:phone"));
    }
}
