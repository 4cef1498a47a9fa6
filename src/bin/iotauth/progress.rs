//! Progress of long commands on stderr: a bar (indicatif) when stderr is a terminal, and one
//! closing line in any case, so that a log or a script also learns how far it got.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub(crate) struct Progress {
    bar: ProgressBar,
    what: &'static str,
}

impl Progress {
    /// A bar of `total` steps, labelled `what` ("checked").
    pub(crate) fn new(what: &'static str, total: usize) -> Self {
        // Drawn only when stderr is a terminal (indicatif hides it otherwise).
        let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{msg} {wide_bar} {pos}/{len} ({eta} left)")
        {
            bar.set_style(style);
        }
        bar.set_message(what);
        Self { bar, what }
    }

    pub(crate) fn set(&self, done: usize) {
        self.bar.set_position(done as u64);
    }

    /// Clears the bar and says how far it got: "checked 3/3".
    pub(crate) fn finish(self) {
        self.bar.finish_and_clear();
        eprintln!(
            "{} {}/{}",
            self.what,
            self.bar.position(),
            self.bar.length().unwrap_or_default()
        );
    }
}
