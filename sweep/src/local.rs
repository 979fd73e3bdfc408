//! `sweep run`: the points of a grid on this machine, `-j N` at a time, the cores shared among
//! them, with a progress display (points done / total, the runs in flight and their batch,
//! the time left).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::execute::{Outcome, Runner, Stage};
use crate::folder::SweepFolder;
use crate::interrupt;
use crate::point::Point;
use crate::status::{newest_snapshot, observe, write_table};
use crate::tools::{Checked, Tools};

/// How often the display reads the manifests of the runs in flight.
const TICK: Duration = Duration::from_millis(250);

/// What happened to each point this run touched.
#[derive(Default)]
pub struct Report {
    pub done: usize,
    pub already_done: usize,
    pub failed: Vec<(String, String)>,
    pub interrupted: Vec<String>,
    pub busy: Vec<(String, String)>,
}

/// A point in flight, as the display shows it.
#[derive(Clone)]
struct InFlight {
    point: usize,
    stage: Stage,
}

/// Run every point not done yet, `jobs` at a time.
pub fn run_local(
    folder: &SweepFolder,
    tools: &Tools,
    analyses: &[String],
    points: &[Point],
    checked: &[Checked],
    jobs: usize,
) -> Report {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runner = Runner {
        folder,
        tools,
        analyses,
        cores: (cores / jobs).max(1),
        job: "sweep run".to_string(),
    };
    let todo: VecDeque<usize> = points
        .iter()
        .filter(|p| !observe(folder, &p.name).is_done_with(analyses))
        .map(|p| p.index)
        .collect();
    let display = Display::new(points, checked, &todo, jobs);
    let queue = Mutex::new(todo);
    let slots: Mutex<Vec<Option<InFlight>>> = Mutex::new(vec![None; jobs]);
    let report = Mutex::new(Report {
        already_done: points.len() - queue.lock().expect("lock").len(),
        ..Report::default()
    });
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..jobs)
            .map(|slot| {
                let (runner, queue, slots, report, display) =
                    (&runner, &queue, &slots, &report, &display);
                scope.spawn(move || loop {
                    if interrupt::interrupted() {
                        break;
                    }
                    let Some(i) = queue.lock().expect("lock").pop_front() else {
                        break;
                    };
                    let set = |stage| {
                        slots.lock().expect("lock")[slot] = Some(InFlight { point: i, stage })
                    };
                    set(Stage::Training);
                    let outcome = runner
                        .run_point(&points[i], &checked[i], &set)
                        .unwrap_or_else(|e| Outcome::Failed(format!("{e:#}")));
                    slots.lock().expect("lock")[slot] = None;
                    // The table is best effort here: the point's own record is already written.
                    if let Err(e) = write_table(folder, points) {
                        display.line(format!("cannot update the status table: {e:#}"));
                    }
                    display.finished(&points[i], checked[i].steps, &outcome);
                    report.lock().expect("lock").add(&points[i].name, outcome);
                })
            })
            .collect();
        while !workers.iter().all(|w| w.is_finished()) {
            display.refresh(folder, points, checked, &slots.lock().expect("lock"));
            std::thread::sleep(TICK);
        }
    });
    display.clear();
    report.into_inner().expect("lock")
}

impl Report {
    fn add(&mut self, name: &str, outcome: Outcome) {
        match outcome {
            Outcome::Done => self.done += 1,
            Outcome::AlreadyDone => self.already_done += 1,
            Outcome::Failed(why) => self.failed.push((name.to_string(), why)),
            Outcome::Interrupted => self.interrupted.push(name.to_string()),
            Outcome::Busy(holder) => self.busy.push((name.to_string(), holder)),
        }
    }
}

/// The progress display: one bar over the batches of the points to run (points done / total
/// as its prefix, the time left from indicatif's estimate), and a line per run in flight.
struct Display {
    multi: MultiProgress,
    total: ProgressBar,
    lines: Vec<ProgressBar>,
    /// Batches of the points finished this run, and how many there were.
    finished: Mutex<(u64, usize, usize)>,
    todo: usize,
}

impl Display {
    fn new(points: &[Point], checked: &[Checked], todo: &VecDeque<usize>, jobs: usize) -> Display {
        let multi = MultiProgress::new();
        let batches: u64 = todo.iter().map(|&i| checked[i].steps).sum();
        let total = multi.add(ProgressBar::new(batches.max(1)));
        total.set_style(
            ProgressStyle::with_template("{prefix} [{wide_bar}] {msg} ~{eta} left")
                .expect("template")
                .progress_chars("=> "),
        );
        let lines = (0..jobs.min(todo.len()))
            .map(|_| {
                let line = multi.add(ProgressBar::new(1));
                line.set_style(ProgressStyle::with_template("  {msg}").expect("template"));
                line
            })
            .collect();
        let display = Display {
            multi,
            total,
            lines,
            finished: Mutex::new((0, 0, 0)),
            todo: todo.len(),
        };
        display.line(format!(
            "{} points, {} to run ({} done before), {jobs} at a time",
            points.len(),
            todo.len(),
            points.len() - todo.len()
        ));
        display
    }

    /// A line above the bars (or on stderr when there is no terminal to draw on).
    fn line(&self, text: String) {
        if self.multi.is_hidden() {
            eprintln!("{text}");
        } else {
            let _ = self.multi.println(text);
        }
    }

    fn finished(&self, point: &Point, steps: u64, outcome: &Outcome) {
        let mut finished = self.finished.lock().expect("lock");
        finished.0 += steps;
        finished.1 += 1;
        let text = match outcome {
            Outcome::Done => format!("done        {}", point.name),
            Outcome::AlreadyDone => format!("done before {}", point.name),
            Outcome::Failed(why) => {
                finished.2 += 1;
                format!("FAILED      {}: {why}", point.name)
            }
            Outcome::Interrupted => format!("interrupted {}", point.name),
            Outcome::Busy(holder) => format!("skipped     {} (run by {holder})", point.name),
        };
        self.line(text);
    }

    fn refresh(
        &self,
        folder: &SweepFolder,
        points: &[Point],
        checked: &[Checked],
        slots: &[Option<InFlight>],
    ) {
        let (batches, count, failed) = *self.finished.lock().expect("lock");
        let mut position = batches;
        let mut in_flight = slots.iter().flatten();
        for line in &self.lines {
            let Some(f) = in_flight.next() else {
                line.set_message("");
                continue;
            };
            let name = &points[f.point].name;
            let steps = checked[f.point].steps;
            let text = match f.stage {
                Stage::Training => {
                    let batch = newest_snapshot(&folder.run_dir(name)).unwrap_or(0);
                    position += batch;
                    format!("{name}: batch {batch}/{steps}")
                }
                Stage::Analyzing => {
                    position += steps;
                    format!("{name}: analysing")
                }
            };
            line.set_message(text);
        }
        self.total
            .set_prefix(format!("{count}/{} points", self.todo));
        self.total.set_message(if failed > 0 {
            format!("{failed} failed")
        } else {
            String::new()
        });
        self.total.set_position(position);
    }

    fn clear(&self) {
        for line in &self.lines {
            line.finish_and_clear();
        }
        self.total.finish_and_clear();
    }
}
