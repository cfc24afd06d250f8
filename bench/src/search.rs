//! Search latency over a large readable set: one user's 1-1 conversations with
//! `search_partners` others hold `search_messages` messages in all, seeded
//! straight through the store's own `send` path (its transactions and search
//! index, without the broker) before the server starts; then that user's device
//! asks `search_queries` searches one at a time over MQTT, each timed from the
//! request to its reply.
//!
//! Every message is eight words drawn uniformly from a vocabulary of
//! [`VOCABULARY`] made-up words, so one word occurs in about 0.4% of the
//! messages and two words together in a few. The queries rotate through three
//! kinds: one word (thousands of matches: the newest page), two words (a few
//! matches among all the candidates of either), and a word that occurs nowhere.

use std::time::{Duration, Instant};

use anyhow::Context;
use messenger_client::{Client, ClientConfig};
use messenger_protocol::wire::Request;
use messenger_protocol::{ConvId, DeviceId, UserId};
use messenger_store::config::{Limits, StorageConfig};
use messenger_store::{Effect, Input, Notify, SqliteStore, Store};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tracing::info;

use super::options::Options;
use super::patience::PATIENCE;
use super::seed::{self, user_name};
use super::server::{Server, ServerSpec};
use super::stats::Summary;

/// Made-up words messages are drawn from.
const VOCABULARY: usize = 2000;

/// Words per message.
const WORDS_PER_MESSAGE: usize = 8;

/// Sends handed to the store per transaction while seeding.
const SEED_BATCH: usize = 2000;

/// Results asked for per search.
const PAGE: u32 = 20;

/// What the search phase measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Search {
    /// Messages in the user's readable set.
    pub(crate) messages: u64,
    /// Seconds the seeding took.
    pub(crate) seed_secs: f64,
    /// Every query.
    pub(crate) all: Summary,
    /// One common word.
    pub(crate) one_word: Summary,
    /// Two words that rarely meet.
    pub(crate) two_words: Summary,
    /// A word that occurs nowhere.
    pub(crate) absent: Summary,
}

/// Word `n` of the vocabulary: five letters, lowercase.
fn word(n: usize) -> String {
    let mut n = n;
    let mut w = String::with_capacity(5);
    for _ in 0..5 {
        w.push(char::from(b'a' + (n % 26) as u8));
        n /= 26;
    }
    w
}

/// A message body of [`WORDS_PER_MESSAGE`] random words.
fn body(rng: &mut StdRng) -> String {
    (0..WORDS_PER_MESSAGE)
        .map(|_| word(rng.gen_range(0..VOCABULARY)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Seeds, starts the server, and times the searches.
pub(crate) async fn run(options: &Options, spec: ServerSpec) -> anyhow::Result<Search> {
    let partners = options.search_partners;
    let devices: Vec<(String, String)> = (0..=partners)
        .map(|n| (user_name(n), "d0".to_owned()))
        .collect();
    let identities = seed::seed(&spec.db(), &devices)?;
    let reader = identities.first().context("the reader's identity")?.clone();
    let started = Instant::now();
    let db = spec.db();
    let messages = options.search_messages;
    tokio::task::spawn_blocking(move || seed_messages(&db, partners, messages))
        .await
        .context("seeding thread")??;
    let seed_secs = started.elapsed().as_secs_f64();
    info!(messages, seed_secs, "search: messages seeded");

    let server = Server::start(spec).await?;
    let mut config = ClientConfig::new(
        server.addr().to_string(),
        UserId::parse(&reader.user)?,
        DeviceId::parse(&reader.device)?,
        reader.token.clone(),
    );
    // The inbox holds every seeded message: skip it, only searches are measured.
    config.start_after_useq = i64::MAX as u64;
    config.request_timeout = Duration::from_secs(60);
    let (client, _events) = Client::connect(config)
        .await
        .context("the reader's device")?;

    bridge_answers(&client).await?;

    let mut rng = StdRng::seed_from_u64(7);
    let (mut one, mut two, mut absent) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..options.search_queries {
        let (query, samples) = match i % 3 {
            0 => (word(rng.gen_range(0..VOCABULARY)), &mut one),
            1 => (
                format!(
                    "{} {}",
                    word(rng.gen_range(0..VOCABULARY)),
                    word(rng.gen_range(0..VOCABULARY))
                ),
                &mut two,
            ),
            // Six letters: no vocabulary word is that long.
            _ => (
                format!("{}q", word(rng.gen_range(0..VOCABULARY))),
                &mut absent,
            ),
        };
        let sent = Instant::now();
        client
            .search(&query, None, None, PAGE)
            .await
            .with_context(|| format!("search {query:?}"))?;
        samples.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    client.disconnect().await;
    let all: Vec<u32> = one.iter().chain(&two).chain(&absent).copied().collect();
    Ok(Search {
        messages,
        seed_secs,
        all: Summary::of(all),
        one_word: Summary::of(one),
        two_words: Summary::of(two),
        absent: Summary::of(absent),
    })
}

/// Waits until the bridge answers `client`'s requests: a device may connect
/// before the bridge has subscribed to requests, and a search (unlike a send)
/// is not published again.
pub(crate) async fn bridge_answers(client: &Client) -> anyhow::Result<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let asked = client.search("warm", None, None, 1);
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), asked).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("the bridge did not answer within {PATIENCE:?}");
        }
    }
}

/// Stores `messages` messages through the store's `send`, round-robin over the
/// 1-1 conversations of user 0 with users 1 to `partners`, each written by
/// either side in turn. Blocking.
fn seed_messages(db: &std::path::Path, partners: usize, messages: u64) -> anyhow::Result<()> {
    let storage = StorageConfig {
        path: db.to_path_buf(),
        durability: messenger_store::config::Durability::Os,
        ..StorageConfig::default()
    };
    // Seeding sends far faster than one user may (`limits.sends_per_sec`).
    let limits = Limits {
        sends_per_sec: 0,
        ..Limits::default()
    };
    let mut store = SqliteStore::open(&storage, limits, Notify::Off, None)
        .context("opening the store to seed it")?;
    let reader = UserId::parse(&user_name(0))?;
    let others: Vec<UserId> = (1..=partners)
        .map(|n| UserId::parse(&user_name(n)))
        .collect::<Result<_, _>>()?;
    let device = DeviceId::parse("seed")?;
    let mut rng = StdRng::seed_from_u64(1);
    let mut n = 0u64;
    let mut now = 1_700_000_000_000u64;
    while n < messages {
        let mut inputs = Vec::with_capacity(SEED_BATCH);
        while inputs.len() < SEED_BATCH && n < messages {
            let other = &others[(n as usize) % others.len()];
            let conv = ConvId::direct(&reader, other)?;
            let sender = if (n / others.len() as u64).is_multiple_of(2) {
                reader.clone()
            } else {
                other.clone()
            };
            inputs.push(Input::Request {
                user: sender,
                device: device.clone(),
                request: Request::Send {
                    id: messenger_protocol::wire::RequestId::parse(&format!("s{n}"))?,
                    conv,
                    body: body(&mut rng),
                    reply_to: None,
                    attachments: Vec::new(),
                },
            });
            n += 1;
        }
        let outcomes = store.process(inputs, now).context("seeding a batch")?;
        // Every send must be stored: a refusal would shrink the readable set
        // below what the figures say.
        for outcome in &outcomes {
            for effect in &outcome.effects {
                if let Effect::Reply(reply) = effect {
                    if !reply.starts_with(br#"{"type":"ack""#) {
                        anyhow::bail!(
                            "seeding: a send was refused: {}",
                            String::from_utf8_lossy(reply)
                        );
                    }
                }
            }
        }
        store.between_batches();
        now += 1000;
        if n % 100_000 < SEED_BATCH as u64 {
            info!(seeded = n, "search: seeding");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_distinct_and_absent_queries_match_none() {
        let words: std::collections::HashSet<String> = (0..VOCABULARY).map(word).collect();
        assert_eq!(words.len(), VOCABULARY);
        assert!(words.iter().all(|w| w.len() == 5));
        let mut rng = StdRng::seed_from_u64(3);
        let b = body(&mut rng);
        assert_eq!(b.split(' ').count(), WORDS_PER_MESSAGE);
    }
}
