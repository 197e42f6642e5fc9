//! Per-user stickiness as the demo's load generator sees it: which colour served each user
//! last, and how many users a sticky canary moved back from green to blue.
//!
//! In sticky mode a rollout only ever adds users to green (a higher share adds buckets), so a
//! user served by green and later by blue has flipped colour; a rollback (share 0) is the one
//! time that is expected, and it is counted separately.

use serde::{Deserialize, Serialize};

/// A colour as HAProxy names the server that answered (`X-Served-By`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    Blue,
    Green,
}

impl Served {
    /// `blue` is blue; `green` and any other server name starting with `green` (the pinned
    /// cohort's server) are green; anything else is not a colour.
    pub fn from_server(name: &str) -> Option<Served> {
        let name = name.trim();
        if name == "blue" {
            Some(Served::Blue)
        } else if name.starts_with("green") {
            Some(Served::Green)
        } else {
            None
        }
    }
}

/// What the load generator saw of its users so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stickiness {
    /// Users in the pool.
    pub users: u32,
    /// Users served at least once.
    pub seen: u32,
    /// Users whose last answer came from green.
    pub on_green: u32,
    /// Users served by green who were later served by blue (ever, each counted once).
    pub flipped: u32,
    /// Answers that named no colour (no `X-Served-By`, or an unknown server).
    pub unattributed: u64,
}

/// Tracks the colour of every user of a pool of `users` ids (`user-0` … `user-{n-1}`).
#[derive(Debug, Clone)]
pub struct UserPool {
    last: Vec<Option<Served>>,
    flipped: Vec<bool>,
    unattributed: u64,
}

impl UserPool {
    pub fn new(users: u32) -> UserPool {
        UserPool {
            last: vec![None; users as usize],
            flipped: vec![false; users as usize],
            unattributed: 0,
        }
    }

    /// The header value that identifies user `index`.
    pub fn id(index: u32) -> String {
        format!("user-{index}")
    }

    /// Records one answer to user `index`, from the server HAProxy names (`None`: no header).
    pub fn record(&mut self, index: u32, server: Option<&str>) {
        let Some(colour) = server.and_then(Served::from_server) else {
            self.unattributed += 1;
            return;
        };
        let i = index as usize;
        if i >= self.last.len() {
            return;
        }
        if self.last[i] == Some(Served::Green) && colour == Served::Blue {
            self.flipped[i] = true;
        }
        self.last[i] = Some(colour);
    }

    pub fn stickiness(&self) -> Stickiness {
        let count =
            |f: &dyn Fn(usize) -> bool| (0..self.last.len()).filter(|&i| f(i)).count() as u32;
        Stickiness {
            users: self.last.len() as u32,
            seen: count(&|i| self.last[i].is_some()),
            on_green: count(&|i| self.last[i] == Some(Served::Green)),
            flipped: count(&|i| self.flipped[i]),
            unattributed: self.unattributed,
        }
    }
}

impl Stickiness {
    /// One line for the live view and the summary, e.g. `1,000 users: 312 last served by green,
    /// 0 flipped colour (green → blue)`: a user counts for the colour of its last answer.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} users: {} last served by green, {} flipped colour (green → blue)",
            thousands(self.users),
            thousands(self.on_green),
            thousands(self.flipped)
        );
        if self.seen < self.users {
            s.push_str(&format!(
                ", {} not seen yet",
                thousands(self.users - self.seen)
            ));
        }
        if self.unattributed > 0 {
            s.push_str(&format!(", {} answers without a colour", self.unattributed));
        }
        s
    }
}

fn thousands(n: u32) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn green_then_blue_is_a_flip_blue_then_green_is_not() {
        let mut pool = UserPool::new(3);
        pool.record(0, Some("blue"));
        pool.record(0, Some("green"));
        pool.record(1, Some("green"));
        pool.record(1, Some("blue"));
        pool.record(1, Some("green"));
        pool.record(2, Some("green_pinned"));
        pool.record(2, None);
        pool.record(2, Some("backup"));
        assert_eq!(
            pool.stickiness(),
            Stickiness {
                users: 3,
                seen: 3,
                on_green: 3,
                flipped: 1,
                unattributed: 2
            }
        );
    }

    #[test]
    fn the_line_names_users_green_and_flips() {
        let mut pool = UserPool::new(1000);
        for i in 0..999 {
            pool.record(i, Some(if i < 312 { "green" } else { "blue" }));
        }
        assert_eq!(
            pool.stickiness().describe(),
            "1,000 users: 312 last served by green, 0 flipped colour (green → blue), 1 not seen yet"
        );
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(12), "12");
    }

    #[test]
    fn out_of_range_users_are_ignored() {
        let mut pool = UserPool::new(1);
        pool.record(5, Some("green"));
        assert_eq!(pool.stickiness().seen, 0);
    }
}
