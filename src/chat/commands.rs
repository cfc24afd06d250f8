//! The slash commands of `messenger chat`: what a typed line asks for.

/// One line typed in `chat`.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Line {
    /// A message.
    Send(String),
    /// `/reply SEQ TEXT`: a message that replies to `SEQ`.
    Reply(u64, String),
    /// `/edit SEQ TEXT`: a new text for one's own message `SEQ`.
    Edit(u64, String),
    /// `/delete SEQ`: deletes a message for everyone.
    Delete(u64),
    /// `/react SEQ EMOJI`: a reaction (`/react SEQ` alone takes one's reaction back).
    React(u64, String),
    /// `/search WORDS`: the newest matching messages of this conversation.
    Search(String),
    /// `/file PATH`: uploads a file and sends it.
    File(String),
    /// `/block USER`: blocks a user (`true`); `/unblock USER` takes it back (`false`).
    Block(String, bool),
    /// A slash command that is not one of these, or lacks its arguments: how to use them.
    Help(String),
}

/// What the commands look like.
pub(super) const USAGE: &str = "commands: /reply SEQ TEXT, /edit SEQ TEXT, /delete SEQ, \
/react SEQ [EMOJI], /search WORDS, /file PATH, /block USER, /unblock USER, /quit; a line starting with // sends the rest with one /";

/// Reads a line. A line that starts with `//` is a message starting with `/`.
pub(super) fn parse(line: &str) -> Line {
    if let Some(rest) = line.strip_prefix("//") {
        return Line::Send(format!("/{rest}"));
    }
    let Some(command) = line.strip_prefix('/') else {
        return Line::Send(line.to_owned());
    };
    let (name, rest) = command.split_once(' ').unwrap_or((command, ""));
    let rest = rest.trim();
    let seq_and = |rest: &str| -> Option<(u64, String)> {
        let (seq, text) = rest.split_once(' ').unwrap_or((rest, ""));
        Some((seq.parse().ok()?, text.trim().to_owned()))
    };
    let parsed = match name {
        "reply" => seq_and(rest)
            .filter(|(_, text)| !text.is_empty())
            .map(|(seq, text)| Line::Reply(seq, text)),
        "edit" => seq_and(rest)
            .filter(|(_, text)| !text.is_empty())
            .map(|(seq, text)| Line::Edit(seq, text)),
        "delete" => rest.parse().ok().map(Line::Delete),
        "react" => seq_and(rest).map(|(seq, emoji)| Line::React(seq, emoji)),
        "search" if !rest.is_empty() => Some(Line::Search(rest.to_owned())),
        "file" if !rest.is_empty() => Some(Line::File(rest.to_owned())),
        "block" | "unblock" if !rest.is_empty() && !rest.contains(' ') => {
            Some(Line::Block(rest.to_owned(), name == "block"))
        }
        _ => None,
    };
    parsed.unwrap_or_else(|| Line::Help(format!("not understood: {line}; {USAGE}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_commands() {
        assert_eq!(parse("hi there"), Line::Send("hi there".into()));
        assert_eq!(parse("//etc"), Line::Send("/etc".into()));
        assert_eq!(parse("/reply 3 yes!"), Line::Reply(3, "yes!".into()));
        assert_eq!(
            parse("/edit 4 fixed text"),
            Line::Edit(4, "fixed text".into())
        );
        assert_eq!(parse("/delete 5"), Line::Delete(5));
        assert_eq!(parse("/react 6 👍"), Line::React(6, "👍".into()));
        assert_eq!(parse("/react 6"), Line::React(6, String::new()));
        assert_eq!(parse("/search 東京 trip"), Line::Search("東京 trip".into()));
        assert_eq!(
            parse("/file notes/a b.txt"),
            Line::File("notes/a b.txt".into())
        );
        assert_eq!(parse("/block bob"), Line::Block("bob".into(), true));
        assert_eq!(parse("/unblock bob"), Line::Block("bob".into(), false));
        for bad in [
            "/reply 3",
            "/edit x text",
            "/delete",
            "/delete two",
            "/search",
            "/file",
            "/block",
            "/unblock bob carol",
            "/fly",
        ] {
            assert!(matches!(parse(bad), Line::Help(_)), "{bad}");
        }
    }
}
