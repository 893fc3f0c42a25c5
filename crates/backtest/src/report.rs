//! The HTML report of a backtest: one self-contained page (inline CSS and
//! SVG, no script, nothing fetched) a risk manager can open or archive.
//!
//! Per portfolio: the verdict in words, a chart of the daily P&L bars
//! against the −VaR line with each exception marked (drawn by plotters'
//! SVG backend), and the test table. The bars and the exception marks have
//! their own fill colours, [`BAR_FILL`] and [`EXCEPTION_FILL`], and nothing
//! else in a chart uses them, so the page can be checked by counting.

use std::fmt::Write as _;

use plotters::prelude::*;

use crate::{Backtest, PortfolioOutcome, TestedPortfolio, TrafficLight};

/// The fill of a P&L bar.
pub const BAR_FILL: &str = "#4C72B0";
/// The fill of an exception's mark.
pub const EXCEPTION_FILL: &str = "#D62728";

const BAR: RGBColor = RGBColor(0x4C, 0x72, 0xB0);
const EXCEPTION: RGBColor = RGBColor(0xD6, 0x27, 0x28);
const VAR_LINE: RGBColor = RGBColor(0x33, 0x33, 0x33);
const CHART_SIZE: (u32, u32) = (960, 360);

/// Escapes text for HTML content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The whole page.
pub fn html(backtest: &Backtest) -> String {
    let mut page = String::with_capacity(64 * 1024);
    let title = format!(
        "Backtest of {} {}",
        escape(&backtest.model),
        escape(&backtest.version)
    );
    let _ = write!(
        page,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
         <style>{STYLE}</style></head><body>\n<h1>{title}</h1>\n"
    );
    let params: Vec<String> = backtest
        .params
        .iter()
        .map(|(k, v)| format!("{}&nbsp;=&nbsp;{v}", escape(k)))
        .collect();
    let _ = writeln!(
        page,
        "<dl class=\"meta\"><dt>Digest</dt><dd><code>{}</code></dd>\
         <dt>Data</dt><dd><code>{}</code></dd>\
         <dt>Days tested</dt><dd>{} to {} (requested {} to {})</dd>\
         <dt>Confidence</dt><dd>{}</dd><dt>Horizon</dt><dd>{}</dd>\
         <dt>Parameters</dt><dd>{}</dd><dt>Backtest id</dt><dd><code>{}</code></dd></dl>",
        escape(&backtest.digest),
        escape(&backtest.snapshot),
        backtest.first_day,
        backtest.last_day,
        backtest.from,
        backtest.to,
        backtest.confidence,
        escape(&backtest.horizon),
        params.join(", "),
        escape(&backtest.id),
    );
    for portfolio in &backtest.portfolios {
        let name = match &portfolio.id {
            Some(id) => format!("Portfolio <code>{}</code>", escape(id)),
            None => format!("Portfolio #{}", portfolio.portfolio_index),
        };
        match &portfolio.outcome {
            PortfolioOutcome::Failed { error } => {
                let _ = writeln!(
                    page,
                    "<section class=\"portfolio failed\" id=\"portfolio-{}\"><h2>{name}</h2>\
                     <p class=\"verdict red\">Not tested: <code>{}</code> {}{}</p></section>",
                    portfolio.portfolio_index,
                    escape(&error.code),
                    escape(&error.message),
                    error.date.map(|d| format!(" (on {d})")).unwrap_or_default(),
                );
            }
            PortfolioOutcome::Tested(tested) => {
                let _ = write!(
                    page,
                    "<section class=\"portfolio\" id=\"portfolio-{}\" data-observations=\"{}\" \
                     data-exceptions=\"{}\"><h2>{name}</h2>\n<p class=\"verdict {}\">{}</p>\n\
                     <figure>{}<figcaption><span class=\"key bar\"></span> daily P&amp;L \
                     <span class=\"key line\"></span> −VaR <span class=\"key exception\"></span> \
                     exception (loss beyond the VaR)</figcaption></figure>\n{}</section>\n",
                    portfolio.portfolio_index,
                    tested.observations,
                    tested.exceptions,
                    tested.traffic_light.as_str(),
                    verdict(tested, backtest.confidence),
                    chart(tested),
                    table(tested),
                );
            }
        }
    }
    page.push_str("</body></html>\n");
    page
}

/// What the numbers mean, in words.
pub fn verdict(t: &TestedPortfolio, confidence: f64) -> String {
    let zone = match t.traffic_light {
        TrafficLight::Green => "Green zone: the exception count is consistent with a correct model",
        TrafficLight::Yellow => {
            "Yellow zone: more exceptions than a correct model gives in 95 % of samples; the model needs review"
        }
        TrafficLight::Red => {
            "Red zone: a correct model almost never gives this many exceptions; it understates the risk"
        }
    };
    let coverage = if t.kupiec.p_value >= 0.05 {
        format!(
            "coverage is not rejected at the 5 % level (Kupiec p = {:.3})",
            t.kupiec.p_value
        )
    } else if (t.exceptions as f64) < t.expected_exceptions {
        format!(
            "coverage is rejected at the 5 % level with fewer exceptions than expected: the VaR \
             looks too conservative (Kupiec p = {:.3})",
            t.kupiec.p_value
        )
    } else {
        format!(
            "coverage is rejected at the 5 % level (Kupiec p = {:.3})",
            t.kupiec.p_value
        )
    };
    let clustering = if t.christoffersen.p_value_ind >= 0.05 {
        format!(
            "exceptions do not cluster significantly (independence p = {:.3})",
            t.christoffersen.p_value_ind
        )
    } else {
        format!(
            "exceptions cluster (independence p = {:.3}): the model reacts too slowly when \
             volatility changes",
            t.christoffersen.p_value_ind
        )
    };
    format!(
        "{zone}. {} exceptions in {} days against {:.1} expected at {} % confidence; {coverage}; \
         {clustering}.",
        t.exceptions,
        t.observations,
        t.expected_exceptions,
        confidence * 100.0,
    )
}

fn table(t: &TestedPortfolio) -> String {
    let c = &t.christoffersen;
    format!(
        "<table><thead><tr><th>Test</th><th>Statistic</th><th>p-value</th></tr></thead><tbody>\
         <tr><td>Observations T / exceptions x / expected</td><td>{} / {} / {:.2}</td><td></td></tr>\
         <tr><td>Kupiec proportion of failures, χ²(1)</td><td>{:.4}</td><td>{:.4}</td></tr>\
         <tr><td>Christoffersen independence, χ²(1) (n00 {}, n01 {}, n10 {}, n11 {})</td>\
         <td>{:.4}</td><td>{:.4}</td></tr>\
         <tr><td>Christoffersen conditional coverage, χ²(2)</td><td>{:.4}</td><td>{:.4}</td></tr>\
         <tr><td>Basel traffic light, P(X ≤ x)</td><td class=\"{}\">{}</td><td>{:.4}</td></tr>\
         </tbody></table>",
        t.observations,
        t.exceptions,
        t.expected_exceptions,
        t.kupiec.lr,
        t.kupiec.p_value,
        c.n00,
        c.n01,
        c.n10,
        c.n11,
        c.lr_ind,
        c.p_value_ind,
        c.lr_cc,
        c.p_value_cc,
        t.traffic_light.as_str(),
        t.traffic_light.as_str(),
        t.cumulative_probability,
    )
}

/// The SVG chart of one portfolio; a chart that cannot be drawn becomes a
/// note in its place (the numbers are in the table regardless).
fn chart(t: &TestedPortfolio) -> String {
    let mut svg = String::new();
    match draw(t, &mut svg) {
        Ok(()) => svg,
        Err(error) => format!(
            "<p class=\"note\">The chart could not be drawn: {}</p>",
            escape(&error)
        ),
    }
}

fn draw(t: &TestedPortfolio, svg: &mut String) -> Result<(), String> {
    let days = &t.days;
    let (mut low, mut high) = (0.0_f64, 0.0_f64);
    for d in days {
        low = low.min(d.pnl).min(-d.var);
        high = high.max(d.pnl).max(-d.var);
    }
    let pad = ((high - low) * 0.05).max(f64::MIN_POSITIVE);
    let (low, high) = (low - pad, high + pad);
    if !(low.is_finite() && high.is_finite()) {
        return Err("a P&L or VaR is not finite".into());
    }
    let n = days.len().max(1) as f64;
    let root = SVGBackend::with_string(svg, CHART_SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..n, low..high)
        .map_err(|e| e.to_string())?;
    let label = |x: &f64| {
        let i = (x.floor().max(0.0) as usize).min(days.len().saturating_sub(1));
        days.get(i).map(|d| d.date.to_string()).unwrap_or_default()
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(6)
        .x_label_formatter(&label)
        .y_desc("P&L")
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(days.iter().enumerate().map(|(i, d)| {
            let x = i as f64;
            Rectangle::new([(x + 0.1, 0.0), (x + 0.9, d.pnl)], BAR.filled())
        }))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(
            days.iter()
                .enumerate()
                .map(|(i, d)| (i as f64 + 0.5, -d.var)),
            VAR_LINE.stroke_width(2),
        ))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(
            days.iter()
                .enumerate()
                .filter(|(_, d)| d.exception)
                .map(|(i, d)| Circle::new((i as f64 + 0.5, d.pnl), 4, EXCEPTION.filled())),
        )
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:1000px}\
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem}\
dl.meta{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}dt{font-weight:600}dd{margin:0}\
table{border-collapse:collapse;margin-top:.5rem}td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}\
.verdict{padding:.5rem .8rem;border-left:6px solid}.verdict.green{border-color:#2ca02c}\
.verdict.yellow{border-color:#e6b800}.verdict.red{border-color:#d62728}\
td.green{background:#dff0d8}td.yellow{background:#fcf3cf}td.red{background:#f5c6cb}\
figure{margin:1rem 0}figcaption{font-size:.9rem;color:#555}\
.key{display:inline-block;width:1rem;height:.7rem;margin:0 .3rem 0 1rem}\
.key.bar{background:#4C72B0}.key.line{height:2px;background:#333}.key.exception{background:#D62728;border-radius:50%;width:.7rem}";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BacktestDay, PortfolioBacktest};
    use chrono::NaiveDate;

    fn backtest(days: Vec<BacktestDay>, id: &str) -> Backtest {
        let first = days.first().map(|d| d.date).unwrap_or_default();
        let last = days.last().map(|d| d.date).unwrap_or_default();
        Backtest {
            id: "bt".into(),
            model: "var-historical".into(),
            version: "1.0.0".into(),
            digest: "sha256:ab".into(),
            snapshot: "embedded@1".into(),
            from: first,
            to: last,
            first_day: first,
            last_day: last,
            confidence: 0.99,
            horizon: "1 day".into(),
            params: Default::default(),
            portfolios: vec![PortfolioBacktest {
                portfolio_index: 0,
                id: Some(id.into()),
                outcome: PortfolioOutcome::Tested(Box::new(TestedPortfolio::new(days, 0.99))),
            }],
            report_url: None,
        }
    }

    fn days(n: usize, exceptions: &[usize]) -> Vec<BacktestDay> {
        let start = NaiveDate::from_ymd_opt(2024, 1, 1).unwrap_or_default();
        (0..n)
            .map(|i| {
                let pnl = if exceptions.contains(&i) {
                    -150.0
                } else {
                    (i % 7) as f64 * 10.0 - 30.0
                };
                BacktestDay::new(start + chrono::Days::new(i as u64), 100.0, pnl)
            })
            .collect()
    }

    #[test]
    fn the_chart_has_a_bar_per_day_and_a_mark_per_exception() {
        let page = html(&backtest(days(40, &[3, 17, 30]), "book-1"));
        assert_eq!(
            page.matches(&format!("fill=\"{BAR_FILL}\"")).count(),
            40,
            "{page}"
        );
        assert_eq!(
            page.matches(&format!("fill=\"{EXCEPTION_FILL}\"")).count(),
            3
        );
        assert!(page.contains("data-observations=\"40\" data-exceptions=\"3\""));
    }

    #[test]
    fn caller_text_is_escaped() {
        let page = html(&backtest(days(5, &[]), "<script>alert(1)</script>"));
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;script&gt;"));
    }
}
