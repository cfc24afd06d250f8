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

/// One node's answer to a CONNZ request (the fields the bridge reads).
#[derive(Debug, Deserialize)]
pub(crate) struct Connz {
    /// The node.
    pub(crate) server: ConnzServer,
    /// Its connections, when it could list them.
    pub(crate) data: Option<ConnzData>,
}

/// The node that answered.
#[derive(Debug, Deserialize)]
pub(crate) struct ConnzServer {
    /// Its id (new at each start).
    pub(crate) id: String,
    /// Its configured name.
    #[serde(default)]
    pub(crate) name: String,
}

/// One page of a node's connections.
#[derive(Debug, Deserialize)]
pub(crate) struct ConnzData {
    /// The connections of this page.
    #[serde(default)]
    pub(crate) connections: Vec<ConnzConnection>,
    /// All the node's connections that match, over every page.
    #[serde(default)]
    pub(crate) total: usize,
}

/// One connection.
#[derive(Debug, Deserialize)]
pub(crate) struct ConnzConnection {
    /// The node's connection id.
    pub(crate) cid: u64,
    /// The MQTT client id, for MQTT connections.
    #[serde(default)]
    pub(crate) mqtt_client: Option<String>,
}

/// Asks every node for its open connections matching `filter` (CONNZ options,
/// `state` set here); the answers that came within [`ANSWER_WAIT`].
pub(crate) async fn connz(
    system: &async_nats::Client,
    mut filter: serde_json::Value,
) -> Result<Vec<Connz>, String> {
    filter["state"] = json!(0);
    let inbox = system.new_inbox();
    let mut replies = system
        .subscribe(inbox.clone())
        .await
        .map_err(|e| e.to_string())?;
    system
        .publish_with_reply(
            "$SYS.REQ.SERVER.PING.CONNZ",
            inbox,
            filter.to_string().into(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut answers = Vec::new();
    let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, replies.next()).await {
        if let Ok(answer) = serde_json::from_slice::<Connz>(&message.payload) {
            answers.push(answer);
        }
    }
    Ok(answers)
}

/// One round of CONNZ requests: every answering node's MQTT client ids, by
/// node name (a node started again keeps its name, not its id).
async fn poll(system: &async_nats::Client) -> Result<HashMap<String, HashSet<String>>, String> {
    let mut answers: HashMap<String, HashSet<String>> = HashMap::new();
    let mut offset = 0;
    loop {
        let page = connz(system, json!({"limit": PAGE, "offset": offset})).await?;
        let mut more = false;
        for answer in page {
            let Some(data) = answer.data else { continue };
            more |= data.total > offset + PAGE;
            let node = if answer.server.name.is_empty() {
                answer.server.id
            } else {
                answer.server.name
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
