//! The chat commands of the `messenger` binary against `messenger serve`:
//! send, history, status and group management, as a user types them.

use crate::util::process::{Messenger, Server};

use crate::util::server::Backend;

crate::util::server::on_both_engines!(
    chat_commands_work_against_a_running_server,
    chat_slash_commands_act_on_messages,
);

async fn as_user(
    messenger: &Messenger,
    server: &Server,
    user: &str,
    args: &[&str],
) -> crate::util::process::Outcome {
    let cmd = messenger.as_user(server.mqtt, user, "pw", args);
    messenger.run_command(cmd).await
}

async fn chat_commands_work_against_a_running_server(backend: Backend) {
    let messenger = Messenger::on(backend);
    for user in ["alice", "bob", "carol"] {
        messenger
            .run(&["user", "add", user, "--password", "pw"])
            .await
            .ok();
    }
    let server = messenger.serve().await;

    let sent = as_user(
        &messenger,
        &server,
        "alice",
        &["send", "bob", "hello from the cli"],
    )
    .await
    .ok();
    assert!(sent.starts_with("sent to dm:alice:bob: seq 1"), "{sent}");
    let history = as_user(&messenger, &server, "bob", &["history", "alice"])
        .await
        .ok();
    assert!(
        history.contains("#1") && history.contains("alice: hello from the cli"),
        "{history}"
    );

    // Nobody of carol's is connected: she has never been seen.
    let status = as_user(&messenger, &server, "bob", &["status", "carol"])
        .await
        .ok();
    assert_eq!(status.trim(), "carol: never seen");

    let created = as_user(
        &messenger,
        &server,
        "alice",
        &["group", "create", "trip", "bob"],
    )
    .await
    .ok();
    let group = created.split(':').take(2).collect::<Vec<_>>().join(":");
    assert!(
        group.starts_with("g:") && created.trim().ends_with("seq 1"),
        "{created}"
    );
    let added = as_user(
        &messenger,
        &server,
        "bob",
        &["group", "add", &group, "carol"],
    )
    .await
    .ok();
    assert!(added.trim().ends_with("seq 2"), "{added}");
    let refused = as_user(
        &messenger,
        &server,
        "bob",
        &["group", "remove", &group, "carol"],
    )
    .await
    .failed();
    assert!(refused.contains("only an admin"), "{refused}");
    let sent = as_user(&messenger, &server, "carol", &["send", &group, "hi group"])
        .await
        .ok();
    assert!(sent.contains("seq 3"), "{sent}");
    let left = as_user(&messenger, &server, "carol", &["group", "leave", &group])
        .await
        .ok();
    assert!(left.trim().ends_with("seq 4"), "{left}");
    let history = as_user(&messenger, &server, "alice", &["history", &group])
        .await
        .ok();
    for expected in ["created", "added carol", "carol: hi group", "left"] {
        assert!(
            history.contains(expected),
            "{expected:?} missing from:\n{history}"
        );
    }
    // Bad input fails with a message and changes nothing.
    let bad = as_user(
        &messenger,
        &server,
        "alice",
        &["group", "add", "g:nope", "bob"],
    )
    .await
    .failed();
    assert!(bad.contains("no conversation"), "{bad}");
    let bad = as_user(&messenger, &server, "alice", &["send", "Not A User", "x"])
        .await
        .failed();
    assert!(bad.contains("invalid user id"), "{bad}");
}

/// `chat`'s slash commands, typed after a message: reply, edit, react, search,
/// delete; what they did shows in the other user's history.
async fn chat_slash_commands_act_on_messages(backend: Backend) {
    let messenger = Messenger::on(backend);
    for user in ["alice", "bob"] {
        messenger
            .run(&["user", "add", user, "--password", "pw"])
            .await
            .ok();
    }
    let server = messenger.serve().await;
    let typed = messenger.dir().join("typed.txt");
    std::fs::write(
        &typed,
        "first words\n/reply 1 an answer\n/edit 1 first words, edited\n/react 1 👍\n\
         /search edited\n/fly\n/delete 2\n",
    )
    .expect("write input");
    let mut cmd = messenger.as_user(server.mqtt, "alice", "pw", &["chat", "bob"]);
    cmd.stdin(std::fs::File::open(&typed).expect("input"));
    let outcome = messenger.run_command(cmd).await;
    assert!(outcome.status.success(), "{outcome:#?}");
    assert!(
        outcome.stdout.contains("found:") && outcome.stdout.contains("first words, edited"),
        "{outcome:#?}"
    );
    assert!(
        outcome.stderr.contains("not understood: /fly"),
        "{outcome:#?}"
    );

    let history = as_user(&messenger, &server, "bob", &["history", "alice"])
        .await
        .ok();
    for expected in [
        "first words, edited",
        "(edited)",
        "👍",
        "↪ #1",
        "(message deleted)",
    ] {
        assert!(
            history.contains(expected),
            "{expected:?} missing from:\n{history}"
        );
    }
    assert!(!history.contains("an answer"), "deleted:\n{history}");
}
