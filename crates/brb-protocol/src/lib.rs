//! The wire protocol between the office button (firmware in `firmware/`) and the host listener
//! (`brb-button`), as specified in `docs/protocol.md`.
//!
//! Why it is shaped so: the same messages travel over two very different links. USB HID gives
//! fixed-size reports that arrive whole and checked by the USB CRC; a serial port (a CDC port or
//! a USB-serial chip) gives a byte stream that may start mid-message, lose bytes when the port
//! is opened late, or carry noise. So there is one binary message codec ([`DeviceMsg`],
//! [`HostMsg`]) and two framings of it: [`hid`] (length-prefixed fixed-size reports) and
//! [`line`] (`$` + hex + CRC-16 + `\n`, which resynchronises on the next `$` after any garbage).
//! The crate does no I/O and depends on nothing internal, so it can be property-tested and
//! shared with anything that talks to a button. The firmware implements the same rules in C++
//! (`firmware/src/logic/protocol.cpp`); both are checked against `docs/protocol-vectors.txt`.

use std::fmt;

pub mod hid;
pub mod line;

/// The protocol version this crate speaks (sent in [`Hello`]). Bumped on any incompatible
/// change; a host refuses a device whose major version it does not know.
pub const PROTOCOL_VERSION: u8 = 1;

/// Longest message a receiver accepts, in bytes. The longest message defined is
/// [`LONGEST_DEFINED`]; the one byte more leaves room for a message type added within this
/// version (see `docs/protocol.md`, "Versioning").
pub const MAX_MESSAGE: usize = 24;

/// Longest message this version defines, in bytes: a hello with a [`MAX_SERIAL`]-byte serial
/// (7 fixed bytes + 16). Checked against the encoder and against `docs/protocol.md` by tests.
pub const LONGEST_DEFINED: usize = 7 + MAX_SERIAL;

/// Longest device serial, in bytes (printable ASCII).
pub const MAX_SERIAL: usize = 16;

/// Message type bytes. Device-to-host types have the high bit clear, host-to-device set, so a
/// frame sent the wrong way is recognised as such.
pub mod types {
    pub const HELLO: u8 = 0x01;
    pub const PRESS: u8 = 0x02;
    pub const RELEASE: u8 = 0x03;
    pub const ARMING: u8 = 0x04;
    pub const HEARTBEAT: u8 = 0x05;
    pub const SHOW: u8 = 0x81;
    pub const PING: u8 = 0x82;
}

/// What a device can do, announced in its [`Hello`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Capabilities(pub u8);

impl Capabilities {
    /// It has a light the host can drive.
    pub const LED: u8 = 0x01;
    /// It has an arming input (key switch or missile cover): presses while disarmed count for
    /// nothing.
    pub const ARMING: u8 = 0x02;
    /// It speaks the HID framing.
    pub const HID: u8 = 0x04;
    /// It speaks the serial line framing.
    pub const SERIAL: u8 = 0x08;

    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

/// What the button's light should say. The host decides it from the control plane's
/// acknowledged state; the firmware turns it into a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShowState {
    /// Workers run: light off.
    Running,
    /// Every worker has paused: solid red.
    Paused,
    /// Paused, but workers still finish jobs in flight: blinking.
    Draining,
    /// Resumed gradually, the ramp is in progress: slow pulse.
    Ramping,
    /// The host cannot reach the control plane (or the firmware hears no host): short flash.
    NoConnection,
    /// Something is wrong that a person must fix (token refused, switch missing, a device the
    /// host cannot trust, a press the host gave up sending): double flash.
    Error,
    /// The host is still trying to get a press to the control plane, for a bounded time: on
    /// with a short dark gap every second. Never the proof that anything changed.
    Sending,
}

impl ShowState {
    pub const ALL: [ShowState; 7] = [
        ShowState::Running,
        ShowState::Paused,
        ShowState::Draining,
        ShowState::Ramping,
        ShowState::NoConnection,
        ShowState::Error,
        ShowState::Sending,
    ];

    pub fn code(self) -> u8 {
        match self {
            ShowState::Running => 0,
            ShowState::Paused => 1,
            ShowState::Draining => 2,
            ShowState::Ramping => 3,
            ShowState::NoConnection => 4,
            ShowState::Error => 5,
            ShowState::Sending => 6,
        }
    }

    pub fn from_code(c: u8) -> Option<Self> {
        ShowState::ALL.get(usize::from(c)).copied()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ShowState::Running => "running",
            ShowState::Paused => "paused",
            ShowState::Draining => "draining",
            ShowState::Ramping => "ramping",
            ShowState::NoConnection => "no-connection",
            ShowState::Error => "error",
            ShowState::Sending => "sending",
        }
    }
}

impl fmt::Display for ShowState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The first thing a device says, and its answer to every [`HostMsg::Ping`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Hello {
    pub protocol: u8,
    /// major, minor, patch
    pub firmware: [u8; 3],
    pub capabilities: Capabilities,
    /// Printable ASCII (0x21..=0x7e), 1 to [`MAX_SERIAL`] bytes, e.g. `BRB-0001`.
    pub serial: String,
}

/// Device to host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DeviceMsg {
    Hello(Hello),
    /// The (debounced) button went down. `seq` counts presses, wrapping at 65535; the release
    /// of the same press carries the same `seq`.
    Press {
        seq: u16,
        armed: bool,
    },
    /// The button came up after `hold_ms`.
    Release {
        seq: u16,
        hold_ms: u32,
        armed: bool,
    },
    /// The arming input changed.
    Arming {
        armed: bool,
    },
    /// Sent every second: the device lives; what its light shows.
    Heartbeat {
        uptime_ms: u32,
        shown: ShowState,
        armed: bool,
    },
}

/// Host to device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostMsg {
    /// Show this state until told otherwise (the host repeats it every second; a device that
    /// hears nothing for 3 s shows [`ShowState::NoConnection`] on its own).
    Show(ShowState),
    /// Answer with a [`DeviceMsg::Hello`].
    Ping,
}

/// Why bytes are not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("empty message")]
    Empty,
    #[error("unknown message type 0x{0:02x}")]
    UnknownType(u8),
    #[error("message type 0x{kind:02x} with {len} bytes")]
    BadLength { kind: u8, len: usize },
    #[error("invalid field in message type 0x{kind:02x}: {what}")]
    BadValue { kind: u8, what: &'static str },
}

impl MessageError {
    /// The error kind's name in `docs/protocol-vectors.txt`.
    pub fn kind(&self) -> &'static str {
        match self {
            MessageError::Empty | MessageError::BadLength { .. } => "length",
            MessageError::UnknownType(_) => "type",
            MessageError::BadValue { .. } => "value",
        }
    }
}

fn flag(kind: u8, b: u8) -> Result<bool, MessageError> {
    match b {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(MessageError::BadValue {
            kind,
            what: "flag is not 0 or 1",
        }),
    }
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn need(kind: u8, b: &[u8], len: usize) -> Result<(), MessageError> {
    if b.len() == len {
        Ok(())
    } else {
        Err(MessageError::BadLength { kind, len: b.len() })
    }
}

/// Whether `s` is a valid device serial.
pub fn valid_serial(s: &[u8]) -> bool {
    !s.is_empty() && s.len() <= MAX_SERIAL && s.iter().all(|c| (0x21..=0x7e).contains(c))
}

impl DeviceMsg {
    /// The message bytes (type first, little-endian fields).
    ///
    /// A hello whose serial is invalid is encoded with the serial cut or replaced so that the
    /// output always decodes; devices build their serial from constants anyway.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_MESSAGE);
        match self {
            DeviceMsg::Hello(h) => {
                let mut serial: Vec<u8> = h
                    .serial
                    .bytes()
                    .filter(|c| (0x21..=0x7e).contains(c))
                    .take(MAX_SERIAL)
                    .collect();
                if serial.is_empty() {
                    serial.push(b'?');
                }
                out.extend_from_slice(&[
                    types::HELLO,
                    h.protocol,
                    h.firmware[0],
                    h.firmware[1],
                    h.firmware[2],
                    h.capabilities.0,
                    serial.len() as u8,
                ]);
                out.extend_from_slice(&serial);
            }
            DeviceMsg::Press { seq, armed } => {
                out.push(types::PRESS);
                out.extend_from_slice(&seq.to_le_bytes());
                out.push(u8::from(*armed));
            }
            DeviceMsg::Release {
                seq,
                hold_ms,
                armed,
            } => {
                out.push(types::RELEASE);
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(&hold_ms.to_le_bytes());
                out.push(u8::from(*armed));
            }
            DeviceMsg::Arming { armed } => {
                out.extend_from_slice(&[types::ARMING, u8::from(*armed)]);
            }
            DeviceMsg::Heartbeat {
                uptime_ms,
                shown,
                armed,
            } => {
                out.push(types::HEARTBEAT);
                out.extend_from_slice(&uptime_ms.to_le_bytes());
                out.push(shown.code());
                out.push(u8::from(*armed));
            }
        }
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, MessageError> {
        let kind = *b.first().ok_or(MessageError::Empty)?;
        match kind {
            types::HELLO => {
                if b.len() < 8 {
                    return Err(MessageError::BadLength { kind, len: b.len() });
                }
                let n = usize::from(b[6]);
                need(kind, b, 7 + n)?;
                let serial = &b[7..];
                if !valid_serial(serial) {
                    return Err(MessageError::BadValue {
                        kind,
                        what: "serial is not 1-16 printable ASCII characters",
                    });
                }
                Ok(DeviceMsg::Hello(Hello {
                    protocol: b[1],
                    firmware: [b[2], b[3], b[4]],
                    capabilities: Capabilities(b[5]),
                    // Checked printable ASCII above, so this is valid UTF-8.
                    serial: String::from_utf8_lossy(serial).into_owned(),
                }))
            }
            types::PRESS => {
                need(kind, b, 4)?;
                Ok(DeviceMsg::Press {
                    seq: u16_at(b, 1),
                    armed: flag(kind, b[3])?,
                })
            }
            types::RELEASE => {
                need(kind, b, 8)?;
                Ok(DeviceMsg::Release {
                    seq: u16_at(b, 1),
                    hold_ms: u32_at(b, 3),
                    armed: flag(kind, b[7])?,
                })
            }
            types::ARMING => {
                need(kind, b, 2)?;
                Ok(DeviceMsg::Arming {
                    armed: flag(kind, b[1])?,
                })
            }
            types::HEARTBEAT => {
                need(kind, b, 7)?;
                Ok(DeviceMsg::Heartbeat {
                    uptime_ms: u32_at(b, 1),
                    shown: ShowState::from_code(b[5]).ok_or(MessageError::BadValue {
                        kind,
                        what: "unknown shown state",
                    })?,
                    armed: flag(kind, b[6])?,
                })
            }
            other => Err(MessageError::UnknownType(other)),
        }
    }
}

impl HostMsg {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            HostMsg::Show(s) => vec![types::SHOW, s.code()],
            HostMsg::Ping => vec![types::PING],
        }
    }

    pub fn decode(b: &[u8]) -> Result<Self, MessageError> {
        let kind = *b.first().ok_or(MessageError::Empty)?;
        match kind {
            types::SHOW => {
                need(kind, b, 2)?;
                Ok(HostMsg::Show(ShowState::from_code(b[1]).ok_or(
                    MessageError::BadValue {
                        kind,
                        what: "unknown state",
                    },
                )?))
            }
            types::PING => {
                need(kind, b, 1)?;
                Ok(HostMsg::Ping)
            }
            other => Err(MessageError::UnknownType(other)),
        }
    }
}

/// The canonical text of a message, as written in `docs/protocol-vectors.txt`.
impl fmt::Display for DeviceMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceMsg::Hello(h) => write!(
                f,
                "hello proto={} fw={}.{}.{} caps=0x{:02x} serial={}",
                h.protocol, h.firmware[0], h.firmware[1], h.firmware[2], h.capabilities.0, h.serial
            ),
            DeviceMsg::Press { seq, armed } => {
                write!(f, "press seq={seq} armed={}", u8::from(*armed))
            }
            DeviceMsg::Release {
                seq,
                hold_ms,
                armed,
            } => write!(
                f,
                "release seq={seq} hold_ms={hold_ms} armed={}",
                u8::from(*armed)
            ),
            DeviceMsg::Arming { armed } => write!(f, "arming armed={}", u8::from(*armed)),
            DeviceMsg::Heartbeat {
                uptime_ms,
                shown,
                armed,
            } => write!(
                f,
                "heartbeat uptime_ms={uptime_ms} shown={shown} armed={}",
                u8::from(*armed)
            ),
        }
    }
}

impl fmt::Display for HostMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostMsg::Show(s) => write!(f, "show {s}"),
            HostMsg::Ping => f.write_str("ping"),
        }
    }
}

/// CRC-16/CCITT-FALSE (poly 0x1021, init 0xffff, no reflection, no final xor): small enough for
/// an 8-bit MCU without a table. Check value: `crc16(b"123456789") == 0x29b1`.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xffff;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_check_value() {
        assert_eq!(crc16(b"123456789"), 0x29b1);
        assert_eq!(crc16(b""), 0xffff);
    }

    #[test]
    fn message_types_say_their_direction() {
        // A host message fed to the device decoder (or the reverse) is an unknown type, never
        // a misread.
        for m in [HostMsg::Ping, HostMsg::Show(ShowState::Paused)] {
            assert!(matches!(
                DeviceMsg::decode(&m.encode()),
                Err(MessageError::UnknownType(_))
            ));
        }
        let p = DeviceMsg::Press {
            seq: 1,
            armed: true,
        };
        assert!(matches!(
            HostMsg::decode(&p.encode()),
            Err(MessageError::UnknownType(2))
        ));
    }

    #[test]
    fn strict_lengths_and_flags() {
        assert_eq!(
            DeviceMsg::decode(&[types::PRESS, 1, 0]),
            Err(MessageError::BadLength {
                kind: types::PRESS,
                len: 3
            })
        );
        assert!(matches!(
            DeviceMsg::decode(&[types::PRESS, 1, 0, 2]),
            Err(MessageError::BadValue { .. })
        ));
        assert!(matches!(
            DeviceMsg::decode(&[types::HELLO, 1, 0, 1, 0, 0x0f, 2, b'A', b' ']),
            Err(MessageError::BadValue { .. })
        ));
        assert_eq!(DeviceMsg::decode(&[]), Err(MessageError::Empty));
    }

    #[test]
    fn hello_with_an_invalid_serial_still_encodes_to_something_decodable() {
        let h = DeviceMsg::Hello(Hello {
            protocol: 1,
            firmware: [0, 1, 0],
            capabilities: Capabilities(0),
            serial: "".into(),
        });
        assert!(DeviceMsg::decode(&h.encode()).is_ok());
    }
}
