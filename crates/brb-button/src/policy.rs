//! What a press means. Pure: events and the switch state in, a decision out; the clock is a
//! millisecond count passed in, so every rule is unit-tested without a device or a server.

use std::time::Duration;

use brb_api::SwitchState;

/// How presses are turned into pause and resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// A release after at least this long a hold, of a press that began while the switch was
    /// paused, resumes. `None`: the button never resumes (resume from the CLI or the app).
    pub long_hold: Option<Duration>,
    /// Presses within this time of the last accepted press count as that same press.
    pub cooldown: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            long_hold: Some(Duration::from_secs(2)),
            cooldown: Duration::from_millis(1500),
        }
    }
}

/// What to do about one device event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Pause { why: &'static str },
    Resume { hold_ms: u32 },
    Ignore { why: &'static str },
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    seq: u16,
    began_paused: bool,
}

/// The policy's memory of one device session (reset when the device says hello: it may have
/// rebooted and restarted its sequence numbers).
#[derive(Debug, Clone)]
pub struct Policy {
    cfg: PolicyConfig,
    last_press_seq: Option<u16>,
    last_release_seq: Option<u16>,
    last_accepted_ms: Option<u64>,
    pending: Option<Pending>,
}

impl Policy {
    pub fn new(cfg: PolicyConfig) -> Self {
        Policy {
            cfg,
            last_press_seq: None,
            last_release_seq: None,
            last_accepted_ms: None,
            pending: None,
        }
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }

    /// A new device session: forget sequence numbers (not the cooldown, which protects the
    /// control plane whatever the device does).
    pub fn new_session(&mut self) {
        self.last_press_seq = None;
        self.last_release_seq = None;
        self.pending = None;
    }

    /// The button went down. `switch`: the control plane's last acknowledged state, `None`
    /// when unknown (unreachable): then a press still tries to pause.
    pub fn on_press(
        &mut self,
        seq: u16,
        armed: bool,
        now_ms: u64,
        switch: Option<SwitchState>,
    ) -> Decision {
        if self.last_press_seq == Some(seq) {
            return Decision::Ignore {
                why: "duplicate sequence number",
            };
        }
        self.last_press_seq = Some(seq);
        self.pending = None;
        if !armed {
            return Decision::Ignore {
                why: "disarmed: the cover is closed or the key is off",
            };
        }
        if let Some(last) = self.last_accepted_ms
            && now_ms.saturating_sub(last) < self.cfg.cooldown.as_millis() as u64
        {
            return Decision::Ignore {
                why: "within the cooldown of the previous press",
            };
        }
        self.last_accepted_ms = Some(now_ms);
        let began_paused = switch == Some(SwitchState::Paused);
        self.pending = Some(Pending { seq, began_paused });
        if began_paused {
            Decision::Ignore {
                why: "already paused (hold to resume)",
            }
        } else {
            Decision::Pause { why: "short press" }
        }
    }

    /// The button came up after `hold_ms`.
    pub fn on_release(
        &mut self,
        seq: u16,
        hold_ms: u32,
        armed: bool,
        switch: Option<SwitchState>,
    ) -> Decision {
        if self.last_release_seq == Some(seq) {
            return Decision::Ignore {
                why: "duplicate sequence number",
            };
        }
        self.last_release_seq = Some(seq);
        let Some(p) = self.pending.take().filter(|p| p.seq == seq) else {
            return Decision::Ignore {
                why: "release of a press that was not accepted",
            };
        };
        let Some(long) = self.cfg.long_hold else {
            return Decision::Ignore {
                why: "resume from the button is disabled",
            };
        };
        if u128::from(hold_ms) < long.as_millis() {
            return Decision::Ignore { why: "short press" };
        }
        if !p.began_paused || switch != Some(SwitchState::Paused) {
            // Holding the button to pause must not resume on release.
            return Decision::Ignore {
                why: "long hold, but the switch was not paused when it began",
            };
        }
        if !armed {
            return Decision::Ignore {
                why: "disarmed: the cover is closed or the key is off",
            };
        }
        Decision::Resume { hold_ms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SwitchState::{Paused, Running};

    fn policy() -> Policy {
        Policy::new(PolicyConfig::default())
    }

    #[test]
    fn short_press_pauses_and_its_release_does_nothing() {
        let mut p = policy();
        assert!(matches!(
            p.on_press(1, true, 0, Some(Running)),
            Decision::Pause { .. }
        ));
        assert!(matches!(
            p.on_release(1, 150, true, Some(Paused)),
            Decision::Ignore { .. }
        ));
    }

    #[test]
    fn long_hold_resumes_only_when_it_began_paused() {
        let mut p = policy();
        // Holding while running: pause on press, nothing on release.
        assert!(matches!(
            p.on_press(1, true, 0, Some(Running)),
            Decision::Pause { .. }
        ));
        assert!(matches!(
            p.on_release(1, 3000, true, Some(Paused)),
            Decision::Ignore { .. }
        ));
        // A later hold while paused resumes.
        assert!(matches!(
            p.on_press(2, true, 10_000, Some(Paused)),
            Decision::Ignore { .. }
        ));
        assert_eq!(
            p.on_release(2, 2000, true, Some(Paused)),
            Decision::Resume { hold_ms: 2000 }
        );
        // One millisecond short is not a long hold.
        p.on_press(3, true, 20_000, Some(Paused));
        assert!(matches!(
            p.on_release(3, 1999, true, Some(Paused)),
            Decision::Ignore { .. }
        ));
    }

    #[test]
    fn resume_can_be_disabled() {
        let mut p = Policy::new(PolicyConfig {
            long_hold: None,
            ..PolicyConfig::default()
        });
        p.on_press(1, true, 0, Some(Paused));
        assert!(matches!(
            p.on_release(1, 60_000, true, Some(Paused)),
            Decision::Ignore { .. }
        ));
    }

    #[test]
    fn disarmed_presses_are_ignored() {
        let mut p = policy();
        assert!(matches!(
            p.on_press(1, false, 0, Some(Running)),
            Decision::Ignore { .. }
        ));
        // And the ignored press does not start a cooldown.
        assert!(matches!(
            p.on_press(2, true, 10, Some(Running)),
            Decision::Pause { .. }
        ));
        // Disarmed during a resume hold: no resume.
        p.on_press(3, true, 10_000, Some(Paused));
        assert!(matches!(
            p.on_release(3, 2500, false, Some(Paused)),
            Decision::Ignore { .. }
        ));
    }

    #[test]
    fn presses_within_the_cooldown_are_one_press() {
        let mut p = policy();
        assert!(matches!(
            p.on_press(1, true, 1000, Some(Running)),
            Decision::Pause { .. }
        ));
        p.on_release(1, 80, true, Some(Running));
        assert!(matches!(
            p.on_press(2, true, 1400, Some(Running)),
            Decision::Ignore { .. }
        ));
        // Its release is not a resume even if held long.
        assert!(matches!(
            p.on_release(2, 5000, true, Some(Paused)),
            Decision::Ignore { .. }
        ));
        assert!(matches!(
            p.on_press(3, true, 2600, Some(Running)),
            Decision::Pause { .. }
        ));
    }

    #[test]
    fn duplicate_sequence_numbers_are_dropped_until_a_new_session() {
        let mut p = policy();
        assert!(matches!(
            p.on_press(7, true, 0, Some(Running)),
            Decision::Pause { .. }
        ));
        assert_eq!(
            p.on_press(7, true, 10_000, Some(Running)),
            Decision::Ignore {
                why: "duplicate sequence number"
            }
        );
        // The device rebooted (hello): seq 7 may come again and is a real press.
        p.new_session();
        assert!(matches!(
            p.on_press(7, true, 20_000, Some(Running)),
            Decision::Pause { .. }
        ));
    }

    #[test]
    fn unknown_state_still_tries_to_pause() {
        let mut p = policy();
        assert!(matches!(
            p.on_press(1, true, 0, None),
            Decision::Pause { .. }
        ));
    }
}
