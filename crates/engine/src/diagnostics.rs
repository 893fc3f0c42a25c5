//! Turning what a failed model printed into a message a quant can act on.

/// What a model said before it trapped, from its stderr: a Rust panic's
/// location and message, a Python exception with the line that raised it,
/// or else the last line printed.
pub(crate) fn last_words(stderr: &str) -> Option<String> {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    // Python (componentize-py): a traceback whose last line is the
    // exception and whose last `File "…", line N, in f` line is where it was
    // raised, followed by the runtime's own (unhelpful) Rust panic.
    if let Some(start) = lines
        .iter()
        .rposition(|l| l.starts_with("Traceback (most recent call last)"))
    {
        let block: Vec<&str> = lines[start + 1..]
            .iter()
            .copied()
            .take_while(|l| !l.contains(" panicked at "))
            .collect();
        if let Some(exception) = block.last() {
            return Some(
                match block.iter().rev().find(|l| l.starts_with("File \"")) {
                    Some(location) => format!("{exception} ({location})"),
                    None => (*exception).to_owned(),
                },
            );
        }
    }
    // Rust: "thread '…' panicked at src/lib.rs:46:18:", the message, then a
    // "note: run with `RUST_BACKTRACE=1` …" line that helps nobody here.
    if let Some(i) = lines.iter().rposition(|l| l.contains(" panicked at ")) {
        let location = lines[i]
            .split(" panicked at ")
            .nth(1)
            .unwrap_or_default()
            .trim_end_matches(':');
        let message: Vec<&str> = lines[i + 1..]
            .iter()
            .copied()
            .take_while(|l| !l.starts_with("note: run with `RUST_BACKTRACE"))
            .collect();
        return Some(format!("panicked at {location}: {}", message.join(" ")));
    }
    lines
        .iter()
        .rev()
        .find(|l| !l.starts_with("note: run with `RUST_BACKTRACE"))
        .map(|l| (*l).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rust_panic_gives_its_location_and_message_without_the_backtrace_note() {
        let stderr = "\nthread '<unnamed>' (1) panicked at src/lib.rs:46:18:\n\
                      covariance matrix is not positive definite for AAPL\n\
                      note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            last_words(stderr).as_deref(),
            Some(
                "panicked at src/lib.rs:46:18: covariance matrix is not positive definite for AAPL"
            )
        );
    }

    #[test]
    fn a_python_traceback_gives_the_exception_and_where_it_was_raised() {
        let stderr = "Traceback (most recent call last):\n\
                      \x20 File \"/app.py\", line 99, in score_batch\n\
                      \x20   results.append(Ok(score(market, job)))\n\
                      \x20 File \"/app.py\", line 62, in score\n\
                      \x20   raise ValueError('too high')\n\
                      ValueError: too high\n\
                      thread '<unnamed>' (1) panicked at runtime/src/lib.rs:1280:25:\n\
                      Python function threw an unexpected exception\n\
                      note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            last_words(stderr).as_deref(),
            Some("ValueError: too high (File \"/app.py\", line 62, in score)")
        );
    }

    #[test]
    fn otherwise_the_last_line_printed() {
        assert_eq!(
            last_words("step 1\nabort: bad state\n\n").as_deref(),
            Some("abort: bad state")
        );
        assert_eq!(last_words("  \n"), None);
    }
}
