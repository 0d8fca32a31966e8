//! Progress of long commands, one helper for all of them. On a terminal it is an indicatif bar.
//! Without one (nohup, a batch scheduler, output piped to a file) a bar cannot draw and
//! indicatif hides it, so a long run would say nothing for hours: there a plain line goes to
//! stderr at a steady interval (every 30 s, or `DISTILL_PROGRESS_INTERVAL` seconds) with the
//! count, the rate, the command's own message (tokens/s, loss) and the ETA, plus one line when
//! the work ends.
//!
//! Rates and ETAs are the mean since the work started (or since [`Progress::reset_eta`]), not
//! indicatif's estimator: that one decays towards zero between updates (a 15-second time
//! constant), so work whose steps take a minute or more (a 0.5B student's training step on a
//! CPU) showed "0.00 steps/s" and ETAs of hundreds of hours between steps.

use std::io::IsTerminal;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// Seconds between plain progress lines when stderr is not a terminal.
pub const INTERVAL_ENV: &str = "DISTILL_PROGRESS_INTERVAL";
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// A progress display: a bar on a terminal, periodic plain lines elsewhere, nothing when hidden.
pub struct Progress {
    bar: ProgressBar,
    unit: &'static str,
    rate: MeanRate,
    /// Plain-line mode (stderr is not a terminal).
    ticker: Option<Ticker>,
}

/// The thread writing plain lines; stopped and joined when the display ends.
struct Ticker {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: Option<JoinHandle<()>>,
}

/// The mean rate since a starting point (time, position), shared by the bar's template keys and
/// the plain lines.
#[derive(Clone)]
struct MeanRate(Arc<Mutex<(Instant, u64)>>);

impl MeanRate {
    fn new() -> Self {
        Self(Arc::new(Mutex::new((Instant::now(), 0))))
    }

    fn restart(&self, position: u64) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = (Instant::now(), position);
    }

    /// Positions per second since the start; 0 before the first one.
    fn per_sec(&self, position: u64) -> f64 {
        self.per_sec_at(position, Instant::now())
    }

    fn per_sec_at(&self, position: u64, now: Instant) -> f64 {
        let (start, from) = *self.0.lock().unwrap_or_else(|e| e.into_inner());
        let secs = now.saturating_duration_since(start).as_secs_f64();
        if position <= from || secs <= 0.0 {
            return 0.0;
        }
        (position - from) as f64 / secs
    }

    /// Time left at the mean rate; `None` before the first position or without a length.
    fn eta(&self, position: u64, length: Option<u64>) -> Option<Duration> {
        let rate = self.per_sec(position);
        let left = length?.saturating_sub(position);
        (rate > 0.0).then(|| Duration::from_secs_f64(left as f64 / rate))
    }
}

impl Progress {
    /// `template`: the bar's indicatif template; `unit`: what the position counts (`steps`,
    /// `samples`); `visible`: false shows nothing at all (`--quiet`).
    pub fn new(total: u64, template: &str, unit: &'static str, visible: bool) -> Self {
        let terminal = std::io::stderr().is_terminal();
        Self::with_mode(total, template, unit, visible, terminal, interval())
    }

    fn with_mode(
        total: u64,
        template: &str,
        unit: &'static str,
        visible: bool,
        terminal: bool,
        interval: Duration,
    ) -> Self {
        let bar = ProgressBar::new(total);
        let rate = MeanRate::new();
        let (for_eta, for_rate) = (rate.clone(), rate.clone());
        let style = ProgressStyle::with_template(template)
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key(
                "eta",
                move |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let eta = for_eta.eta(s.pos(), s.len());
                    let _ = w.write_str(&eta.map_or("unknown".into(), clock));
                },
            )
            .with_key(
                "per_sec",
                move |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.2}/s", for_rate.per_sec(s.pos()));
                },
            );
        bar.set_style(style);
        let ticker = if !visible || !terminal {
            // Hidden, the bar still keeps the position, rate and ETA the plain lines read.
            bar.set_draw_target(ProgressDrawTarget::hidden());
            visible.then(|| Ticker::start(bar.clone(), rate.clone(), unit, interval))
        } else {
            bar.enable_steady_tick(Duration::from_millis(250));
            None
        };
        Self {
            bar,
            unit,
            rate,
            ticker,
        }
    }

    pub fn set_position(&self, position: u64) {
        self.bar.set_position(position);
    }

    /// The total, once it is known (the bar starts with 0 when it is not).
    pub fn set_length(&self, total: u64) {
        self.bar.set_length(total);
    }

    pub fn set_message(&self, message: impl Into<std::borrow::Cow<'static, str>>) {
        self.bar.set_message(message);
    }

    pub fn set_prefix(&self, prefix: impl Into<std::borrow::Cow<'static, str>>) {
        self.bar.set_prefix(prefix);
    }

    /// Starts the ETA afresh (after positions that were done before this run).
    pub fn reset_eta(&self) {
        self.rate.restart(self.bar.position());
    }

    /// A line above the bar; without a terminal, straight to stderr (indicatif drops the lines
    /// of a hidden bar).
    pub fn println(&self, line: impl AsRef<str>) {
        if self.ticker.is_some() {
            eprintln!("{}", line.as_ref());
        } else {
            self.bar.println(line.as_ref());
        }
    }

    /// Ends the display: the bar disappears, or a last plain line says where the work stopped.
    pub fn finish_and_clear(mut self) {
        if self.stop_ticker() {
            eprintln!("{}", line(&self.bar, &self.rate, self.unit, true));
        }
        self.bar.finish_and_clear();
    }

    /// Ends the display leaving `message` on the bar (or in the last plain line).
    pub fn finish_with_message(mut self, message: impl Into<std::borrow::Cow<'static, str>>) {
        self.bar.set_message(message);
        if self.stop_ticker() {
            eprintln!("{}", line(&self.bar, &self.rate, self.unit, true));
        }
        self.bar.finish();
    }

    /// Stops the plain-line thread; whether there was one.
    fn stop_ticker(&mut self) -> bool {
        match self.ticker.take() {
            Some(mut ticker) => {
                ticker.stop();
                true
            }
            None => false,
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop_ticker();
    }
}

impl Ticker {
    fn start(bar: ProgressBar, rate: MeanRate, unit: &'static str, interval: Duration) -> Self {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("distill-progress".into())
            .spawn(move || {
                let (lock, wake) = &*flag;
                let mut stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    let (guard, timeout) = wake
                        .wait_timeout_while(stopped, interval, |s| !*s)
                        .unwrap_or_else(|e| e.into_inner());
                    stopped = guard;
                    if !timeout.timed_out() || *stopped {
                        return;
                    }
                    eprintln!("{}", line(&bar, &rate, unit, false));
                }
            })
            .ok();
        Self { stop, handle }
    }

    fn stop(&mut self) {
        let (lock, wake) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// `DISTILL_PROGRESS_INTERVAL` as seconds, else 30 s.
fn interval() -> Duration {
    match std::env::var(INTERVAL_ENV) {
        Err(_) => DEFAULT_INTERVAL,
        Ok(text) => match text.trim().parse::<f64>() {
            Ok(secs) if secs.is_finite() && secs > 0.0 => Duration::from_secs_f64(secs),
            _ => {
                tracing::warn!(
                    "`{INTERVAL_ENV}` must be a positive number of seconds, got `{text}`; using 30"
                );
                DEFAULT_INTERVAL
            }
        },
    }
}

/// One plain progress line from the bar's state.
fn line(bar: &ProgressBar, rate: &MeanRate, unit: &str, last: bool) -> String {
    let position = bar.position();
    plain_line(&PlainState {
        prefix: bar.prefix(),
        position,
        length: bar.length(),
        unit,
        per_sec: rate.per_sec(position),
        message: bar.message(),
        elapsed: bar.elapsed(),
        eta: (!last).then(|| rate.eta(position, bar.length()).unwrap_or_default()),
    })
}

struct PlainState<'a> {
    prefix: String,
    position: u64,
    length: Option<u64>,
    unit: &'a str,
    per_sec: f64,
    message: String,
    elapsed: Duration,
    /// `None` on the last line.
    eta: Option<Duration>,
}

/// `[prefix: ]12/40 samples (30%) · 1.5 samples/s · {message} · elapsed 0:00:08 · ETA 0:00:19`;
/// with the unit `bytes`, sizes in KiB, MiB, GiB (`1.2 MiB/4.0 MiB (30%) · 2.5 MiB/s`).
fn plain_line(s: &PlainState) -> String {
    let mut parts = Vec::new();
    let bytes = s.unit == "bytes";
    let amount = |n: u64| {
        if bytes {
            crate::model_cmd::human_bytes(n)
        } else {
            n.to_string()
        }
    };
    let unit = if bytes {
        String::new()
    } else {
        format!(" {}", s.unit)
    };
    let count = match s.length {
        Some(len) if len > 0 => format!(
            "{}/{}{unit} ({:.0}%)",
            amount(s.position),
            amount(len),
            100.0 * s.position as f64 / len as f64
        ),
        _ => format!("{}{unit}", amount(s.position)),
    };
    parts.push(count);
    if s.per_sec.is_finite() && s.per_sec > 0.0 {
        parts.push(if bytes {
            format!("{}/s", amount(s.per_sec as u64))
        } else {
            format!("{:.2} {}/s", s.per_sec, s.unit)
        });
    }
    if !s.message.trim().is_empty() {
        parts.push(s.message.trim().to_string());
    }
    parts.push(format!("elapsed {}", clock(s.elapsed)));
    match s.eta {
        Some(eta) if s.per_sec.is_finite() && s.per_sec > 0.0 => {
            parts.push(format!("ETA {}", clock(eta)))
        }
        Some(_) => parts.push("ETA unknown".into()),
        None => parts.push("done".into()),
    }
    let text = parts.join(" · ");
    let prefix = s.prefix.trim();
    if prefix.is_empty() {
        text
    } else {
        format!("{prefix}: {text}")
    }
}

/// `h:mm:ss`.
fn clock(d: Duration) -> String {
    let secs = d.as_secs();
    format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> PlainState<'static> {
        PlainState {
            prefix: String::new(),
            position: 12,
            length: Some(40),
            unit: "samples",
            per_sec: 1.5,
            message: "812.4 tok/s".into(),
            elapsed: Duration::from_secs(8),
            eta: Some(Duration::from_secs(3725)),
        }
    }

    #[test]
    fn plain_lines_say_count_rate_message_and_eta() {
        assert_eq!(
            plain_line(&state()),
            "12/40 samples (30%) · 1.50 samples/s · 812.4 tok/s · elapsed 0:00:08 · ETA 1:02:05"
        );
        let last = PlainState {
            prefix: "student".into(),
            eta: None,
            message: String::new(),
            ..state()
        };
        assert_eq!(
            plain_line(&last),
            "student: 12/40 samples (30%) · 1.50 samples/s · elapsed 0:00:08 · done"
        );
        let stalled = PlainState {
            per_sec: 0.0,
            length: None,
            ..state()
        };
        assert_eq!(
            plain_line(&stalled),
            "12 samples · 812.4 tok/s · elapsed 0:00:08 · ETA unknown"
        );
        let download = PlainState {
            prefix: "download".into(),
            position: 3 << 20,
            length: Some(12 << 20),
            unit: "bytes",
            per_sec: 1536.0 * 1024.0,
            message: "model.safetensors".into(),
            ..state()
        };
        assert_eq!(
            plain_line(&download),
            "download: 3.0 MiB/12.0 MiB (25%) · 1.5 MiB/s · model.safetensors · elapsed 0:00:08 · \
             ETA 1:02:05"
        );
    }

    /// A step every 75 s: the rate stays the mean (indicatif's decays to zero between steps,
    /// which printed ETAs of hundreds of hours), and positions before a resume do not count.
    #[test]
    fn slow_steps_keep_their_mean_rate() {
        let rate = MeanRate::new();
        let start = rate.0.lock().unwrap().0;
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(rate.per_sec_at(0, at(60)), 0.0);
        assert_eq!(rate.per_sec_at(2, at(150)), 2.0 / 150.0);
        assert_eq!(rate.per_sec_at(2, at(200)), 2.0 / 200.0);
        assert_eq!(rate.eta(1, None), None);
        rate.restart(40);
        assert_eq!(rate.per_sec(40), 0.0);
        assert_eq!(rate.eta(40, Some(100)), None);
    }

    #[test]
    fn hidden_progress_has_no_ticker_and_terminal_progress_no_lines() {
        let quiet = Progress::with_mode(5, "{bar}", "steps", false, false, DEFAULT_INTERVAL);
        assert!(quiet.ticker.is_none());
        let terminal = Progress::with_mode(5, "{bar}", "steps", true, true, DEFAULT_INTERVAL);
        assert!(terminal.ticker.is_none());
        let piped = Progress::with_mode(5, "{bar}", "steps", true, false, DEFAULT_INTERVAL);
        assert!(piped.ticker.is_some());
        piped.finish_and_clear();
    }
}
