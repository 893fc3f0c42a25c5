//! Loader for `--prices FILE.csv`: daily closes in long format.
//!
//! ```text
//! date,instrument,close
//! 2018-12-31,SPX,2506.85
//! 2018-12-31,TLT,121.51
//! ```
//!
//! The header must be exactly `date,instrument,close`. Dates are ISO 8601
//! (`YYYY-MM-DD`), closes finite numbers > 0, instrument ids 1..=64
//! characters of `[A-Za-z0-9._:/-]`; each (date, instrument) appears once.
//! Whitespace around fields and blank lines are ignored; extra columns are
//! not. Rows may come in any order. Every error names its line, since the
//! file is written by people and the message is all they get.

use std::path::Path;

use chrono::NaiveDate;

use super::DataError;
use super::table::{BuildError, PriceTable, validate_close, validate_instrument_id};

const HEADER: [&str; 3] = ["date", "instrument", "close"];

/// Reads a prices CSV from any reader. Never panics, whatever the bytes.
///
/// The input is read whole first: line numbers are counted on the raw bytes,
/// because the CSV parser skips blank lines without reporting them.
pub fn load_prices_csv(mut reader: impl std::io::Read) -> Result<PriceTable, DataError> {
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes)?;
    parse(&bytes)
}

/// Reads a prices CSV file; I/O errors name the path.
pub fn load_prices_csv_file(path: &Path) -> Result<PriceTable, DataError> {
    let with_path = |e: std::io::Error| {
        DataError::Io(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", path.display()),
        ))
    };
    let bytes = std::fs::read(path).map_err(with_path)?;
    parse(&bytes)
}

fn parse(bytes: &[u8]) -> Result<PriceTable, DataError> {
    let mut rdr = ::csv::ReaderBuilder::new()
        .has_headers(false)
        // Column counts are checked here, to name the line and the count.
        .flexible(true)
        .trim(::csv::Trim::All)
        .from_reader(bytes);
    let mut lines = LineCounter::new(bytes);
    let mut record = ::csv::ByteRecord::new();

    let Some(header_line) = next_record(&mut rdr, &mut record, &mut lines)? else {
        return Err(DataError::Csv {
            line: 1,
            message: format!("empty file: expected the header `{}`", HEADER.join(",")),
        });
    };
    let header_ok = record.len() == HEADER.len()
        && record
            .iter()
            .zip(HEADER)
            .all(|(got, want)| got == want.as_bytes());
    if !header_ok {
        let got: Vec<_> = record.iter().map(String::from_utf8_lossy).collect();
        return Err(DataError::Csv {
            line: header_line,
            message: format!(
                "bad header `{}`: expected exactly `{}`",
                got.join(","),
                HEADER.join(",")
            ),
        });
    }

    let mut rows: Vec<(NaiveDate, String, f64)> = Vec::new();
    let mut row_lines: Vec<u64> = Vec::new();
    while let Some(line) = next_record(&mut rdr, &mut record, &mut lines)? {
        rows.push(parse_row(&record).map_err(|message| DataError::Csv { line, message })?);
        row_lines.push(line);
    }

    PriceTable::build(&rows).map_err(|e| match e {
        BuildError::Empty => DataError::Csv {
            line: header_line + 1,
            message: "no price rows after the header".to_owned(),
        },
        BuildError::Duplicate { first, second } => {
            let (date, instrument, _) = &rows[second];
            DataError::Csv {
                line: row_lines[second],
                message: format!(
                    "duplicate close for {instrument} on {date} (first given on line {})",
                    row_lines[first]
                ),
            }
        }
    })
}

/// Reads the next non-blank record and returns the line it starts on, or
/// `None` at the end of input.
fn next_record(
    rdr: &mut ::csv::Reader<&[u8]>,
    record: &mut ::csv::ByteRecord,
    lines: &mut LineCounter<'_>,
) -> Result<Option<u64>, DataError> {
    loop {
        let more = rdr.read_byte_record(record).map_err(|e| {
            let line = e.position().map_or(0, ::csv::Position::line);
            match e.into_kind() {
                ::csv::ErrorKind::Io(io) => DataError::Io(io),
                other => DataError::Csv {
                    line,
                    message: format!("unreadable CSV: {other:?}"),
                },
            }
        })?;
        if !more {
            return Ok(None);
        }
        let start = record.position().map_or(0, ::csv::Position::byte);
        let line = lines.record_line(usize::try_from(start).unwrap_or(usize::MAX));
        // A line of only whitespace trims to one empty field: blank too.
        if !(record.len() == 1 && record[0].is_empty()) {
            return Ok(Some(line));
        }
    }
}

/// Maps byte offsets to 1-based line numbers, moving forward only.
///
/// A line ends at `\n`, `\r\n` or a lone `\r`, as for the CSV parser.
struct LineCounter<'a> {
    bytes: &'a [u8],
    pos: usize,
    line: u64,
}

impl<'a> LineCounter<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        LineCounter {
            bytes,
            pos: 0,
            line: 1,
        }
    }

    /// The line of the record the parser reports at byte `start`: the parser
    /// reports the end of the previous record, before any blank lines.
    fn record_line(&mut self, start: usize) -> u64 {
        let start = start.min(self.bytes.len());
        while self.pos < start {
            self.step();
        }
        while matches!(self.bytes.get(self.pos), Some(b'\r' | b'\n')) {
            self.step();
        }
        self.line
    }

    fn step(&mut self) {
        let b = self.bytes[self.pos];
        let next = self.bytes.get(self.pos + 1);
        if b == b'\n' || (b == b'\r' && next != Some(&b'\n')) {
            self.line += 1;
        }
        self.pos += 1;
    }
}

fn parse_row(record: &::csv::ByteRecord) -> Result<(NaiveDate, String, f64), String> {
    if record.len() != HEADER.len() {
        return Err(format!(
            "expected 3 fields (date,instrument,close), found {}",
            record.len()
        ));
    }
    let field = |i: usize| {
        std::str::from_utf8(&record[i])
            .map_err(|_| format!("the {} field is not valid UTF-8", HEADER[i]))
    };
    let (date, instrument, close) = (field(0)?, field(1)?, field(2)?);

    let date = parse_date(date)?;
    validate_instrument_id(instrument)?;
    let close = close
        .parse::<f64>()
        .map_err(|_| format!("close {close:?} for {instrument} on {date} is not a number"))?;
    validate_close(close).map_err(|m| format!("{instrument} on {date}: {m}"))?;
    Ok((date, instrument.to_owned(), close))
}

/// Parses exactly `YYYY-MM-DD`; chrono alone would also take e.g. `2018-1-2`.
fn parse_date(s: &str) -> Result<NaiveDate, String> {
    let b = s.as_bytes();
    let shape_ok = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    let date = shape_ok
        .then(|| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok())
        .flatten();
    date.ok_or_else(|| format!("bad date {s:?}: expected an ISO date YYYY-MM-DD"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<PriceTable, DataError> {
        load_prices_csv(text.as_bytes())
    }

    fn csv_error(text: &str) -> (u64, String) {
        match load(text) {
            Err(DataError::Csv { line, message }) => (line, message),
            other => panic!("expected a CSV error for {text:?}, got {other:?}"),
        }
    }

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn loads_the_long_format() {
        let t = load(
            "date,instrument,close\n\
             2018-12-31,SPX,2506.85\n\
             2018-12-28,SPX,2485.74\n\
             2018-12-31,TLT,121.51\n",
        )
        .unwrap();
        assert_eq!(t.instruments(), ["SPX", "TLT"]);
        assert_eq!(t.first_date(), d(2018, 12, 28));
        let w = t.window(&["SPX", "TLT"], d(2018, 12, 31), 1).unwrap();
        assert_eq!(w.series[0].closes, [2485.74, 2506.85]);
        assert!(w.series[1].closes[0].is_nan());
        assert_eq!(w.series[1].closes[1], 121.51);
    }

    #[test]
    fn tolerates_whitespace_crlf_blank_lines_bom_and_no_final_newline() {
        let plain = load("date,instrument,close\n2018-12-31,SPX,2506.85\n").unwrap();
        for text in [
            "date,instrument,close\n2018-12-31,SPX,2506.85",
            "\u{feff}date,instrument,close\r\n2018-12-31,SPX,2506.85\r\n",
            " date , instrument ,close\n\n  2018-12-31 ,\tSPX , 2506.85 \n\n",
        ] {
            let t = load(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(t.version(), plain.version(), "{text:?}");
        }
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        let h = "date,instrument,close\n";
        let cases: [(String, u64, &str); 14] = [
            (String::new(), 1, "empty file"),
            ("date,ticker,close\n".into(), 1, "bad header"),
            ("date,instrument,close,volume\n".into(), 1, "bad header"),
            (h.into(), 2, "no price rows"),
            (
                format!("{h}2018-12-31,SPX,1\n2018-13-01,SPX,1\n"),
                3,
                "bad date \"2018-13-01\"",
            ),
            (format!("{h}12/31/2018,SPX,1\n"), 2, "bad date"),
            (format!("{h}2018-1-2,SPX,1\n"), 2, "bad date"),
            (
                format!("{h}2018-12-31,SPX,abc\n"),
                2,
                "\"abc\" for SPX on 2018-12-31 is not a number",
            ),
            (
                format!("{h}2018-12-31,SPX,NaN\n"),
                2,
                "SPX on 2018-12-31: close NaN",
            ),
            (format!("{h}2018-12-31,SPX,inf\n"), 2, "close inf"),
            (format!("{h}2018-12-31,SPX,0\n"), 2, "close 0 must be"),
            (format!("{h}2018-12-31,SPX,-3.5\n"), 2, "close -3.5"),
            (
                format!("{h}2018-12-31,GC=F,1\n"),
                2,
                "invalid instrument id \"GC=F\"",
            ),
            (format!("{h}2018-12-31,SPX,1,extra\n"), 2, "found 4"),
        ];
        for (text, want_line, want_msg) in cases {
            let (line, message) = csv_error(&text);
            assert_eq!(line, want_line, "{text:?}: {message}");
            assert!(
                message.contains(want_msg),
                "{text:?}: {message:?} lacks {want_msg:?}"
            );
        }
        let (line, message) = csv_error(&format!("{h}2018-12-31,SPX\n"));
        assert_eq!((line, message.contains("found 2")), (2, true), "{message}");
        let (line, message) = csv_error(&format!("{h}2018-12-31,,5\n"));
        assert_eq!(
            (line, message.contains("empty instrument id")),
            (2, true),
            "{message}"
        );
    }

    #[test]
    fn duplicates_name_both_lines() {
        let (line, message) = csv_error(
            "date,instrument,close\n\
             2018-12-28,SPX,1\n\
             2018-12-31,SPX,2\n\
             2018-12-28,TLT,3\n\
             2018-12-28,SPX,4\n",
        );
        assert_eq!(line, 5);
        assert!(
            message.contains("SPX on 2018-12-28") && message.contains("line 2"),
            "{message}"
        );
    }

    #[test]
    fn quoted_lines_count_physical_lines() {
        // A quoted field spanning lines must not throw later line numbers off.
        let (line, _) = csv_error("date,instrument,close\n2018-12-31,\"A\nB\",1\n2018-12-31,X,0\n");
        assert_eq!(line, 2, "the multi-line id itself is the first error");
        let (line, _) =
            csv_error("date,instrument,close\n2018-12-31,\"SPX\n\",1\n2018-12-31,X,0\n");
        assert_eq!(line, 4, "a record after a two-line record");
        let (line, _) = csv_error("date,instrument,close\n\n\n2018-12-31,X,0\n");
        assert_eq!(line, 4, "blank lines count");
        let (line, _) = csv_error("date,instrument,close\r\n \r\n\r\n2018-12-31,X,0\r\n");
        assert_eq!(line, 4, "CRLF and whitespace-only lines count");
        let (line, _) = csv_error("date,instrument,close\r2018-12-31,A,1\r2018-12-31,X,0");
        assert_eq!(line, 3, "lone CR ends a line");
    }

    #[test]
    fn never_panics_on_garbage() {
        let mut inputs: Vec<Vec<u8>> = vec![
            vec![0xff, 0xfe, 0x00, 0x80],
            b"date,instrument,close\n2018-12-31,\xff\xfe,1\n".to_vec(),
            b"date,instrument,close\n\xc3\x28-12-31,SPX,1\n".to_vec(),
            b"date,instrument,close\n2018-12-31,SPX,\"1\n".to_vec(),
            b"\"\"\"\n,,,\n\r\r\n\"".to_vec(),
            b"\xef\xbb\xbf".to_vec(),
            b"date,instrument,close\n\x00\x00\x00\n".to_vec(),
        ];
        // Pseudo-random byte soup, with and without a valid header.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for n in 0..200 {
            let mut bytes = if n % 2 == 0 {
                b"date,instrument,close\n".to_vec()
            } else {
                Vec::new()
            };
            for _ in 0..(n * 7 % 300) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let alphabet = b"0123456789-,.\n\r\"eE+SPX \xff\x80";
                bytes.push(if x.is_multiple_of(4) {
                    (x >> 8) as u8
                } else {
                    alphabet[(x >> 16) as usize % alphabet.len()]
                });
            }
            inputs.push(bytes);
        }
        for bytes in inputs {
            let result = std::panic::catch_unwind(|| load_prices_csv(bytes.as_slice()));
            let result = result.unwrap_or_else(|_| panic!("panicked on {bytes:?}"));
            if let Err(e) = result {
                assert!(!e.to_string().is_empty());
            }
        }
        let (line, message) = csv_error_bytes(b"date,instrument,close\n2018-12-31,\xff\xfe,1\n");
        assert_eq!(line, 2);
        assert!(
            message.contains("instrument field is not valid UTF-8"),
            "{message}"
        );
    }

    fn csv_error_bytes(bytes: &[u8]) -> (u64, String) {
        match load_prices_csv(bytes) {
            Err(DataError::Csv { line, message }) => (line, message),
            other => panic!("expected a CSV error, got {other:?}"),
        }
    }

    #[test]
    fn file_errors_name_the_path() {
        let path = Path::new("/nonexistent/riskhost/prices.csv");
        let e = load_prices_csv_file(path).unwrap_err();
        assert!(matches!(e, DataError::Io(_)), "{e}");
        assert!(
            e.to_string().contains("/nonexistent/riskhost/prices.csv"),
            "{e}"
        );
    }

    #[test]
    fn loads_a_file() {
        let path =
            std::env::temp_dir().join(format!("riskhost-market-csv-{}.csv", std::process::id()));
        std::fs::write(&path, "date,instrument,close\n2018-12-31,SPX,2506.85\n").unwrap();
        let t = load_prices_csv_file(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(t.unwrap().last_date(), d(2018, 12, 31));
    }
}
