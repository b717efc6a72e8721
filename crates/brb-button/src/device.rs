//! Devices: a [`Transport`] turns a USB HID device or a serial port into protocol messages.
//!
//! All of it is blocking I/O (hidapi and serialport are blocking), run on one dedicated thread
//! by the daemon. The HID paths go through the [`HidIo`] trait so that they are tested with
//! report bytes: no virtual HID device exists on a test machine.

use std::time::{Duration, Instant};

use brb_protocol::{Capabilities, DeviceMsg, Hello, HostMsg, PROTOCOL_VERSION, hid, line};

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("serial port {port}: {message}")]
    Serial { port: String, message: String },
    #[error("HID: {0}")]
    Hid(String),
    #[error("device {0} went away")]
    Gone(String),
}

/// One open device, speaking protocol messages whatever the link.
pub trait Transport: Send {
    /// For logs: what and where.
    fn describe(&self) -> String;
    /// Waits up to `timeout` for messages; an empty vector on timeout. Undecodable input is
    /// dropped and counted here (see [`Transport::bad_frames`]), never returned as an error: only
    /// a broken link is an error.
    fn recv(&mut self, timeout: Duration) -> Result<Vec<DeviceMsg>, DeviceError>;
    fn send(&mut self, msg: HostMsg) -> Result<(), DeviceError>;
    /// Frames or reports rejected so far.
    fn bad_frames(&self) -> u64;
}

// ---------------------------------------------------------------------------------------------
// Serial

pub struct SerialTransport {
    port: Box<dyn serialport::SerialPort>,
    name: String,
    decoder: line::Decoder,
    bad: u64,
}

pub const BAUD: u32 = 115_200;

impl SerialTransport {
    pub fn open(name: &str) -> Result<Self, DeviceError> {
        let port = serialport::new(name, BAUD)
            .timeout(Duration::from_millis(50))
            .open()
            .map_err(|e| DeviceError::Serial {
                port: name.to_string(),
                message: e.to_string(),
            })?;
        Ok(SerialTransport {
            port,
            name: name.to_string(),
            decoder: line::Decoder::new(),
            bad: 0,
        })
    }
}

/// Decodes whatever bytes arrived; keeps only valid device messages.
fn decode_bytes(decoder: &mut line::Decoder, bytes: &[u8], bad: &mut u64) -> Vec<DeviceMsg> {
    let mut out = Vec::new();
    for frame in decoder.feed(bytes) {
        match frame
            .map_err(|e| e.to_string())
            .and_then(|b| DeviceMsg::decode(&b).map_err(|e| e.to_string()))
        {
            Ok(m) => out.push(m),
            Err(e) => {
                *bad += 1;
                tracing::debug!(error = %e, "dropped a bad frame from the device");
            }
        }
    }
    out
}

impl Transport for SerialTransport {
    fn describe(&self) -> String {
        format!("serial {}", self.name)
    }

    fn recv(&mut self, _timeout: Duration) -> Result<Vec<DeviceMsg>, DeviceError> {
        // The port's own timeout (50 ms) bounds the wait.
        let mut buf = [0u8; 256];
        match self.port.read(&mut buf) {
            Ok(0) => Err(DeviceError::Gone(self.name.clone())),
            Ok(n) => Ok(decode_bytes(&mut self.decoder, &buf[..n], &mut self.bad)),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Ok(Vec::new()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(Vec::new()),
            Err(e) => Err(DeviceError::Serial {
                port: self.name.clone(),
                message: e.to_string(),
            }),
        }
    }

    fn send(&mut self, msg: HostMsg) -> Result<(), DeviceError> {
        self.port
            .write_all(&line::encode(&msg.encode()))
            .and_then(|()| self.port.flush())
            .map_err(|e| DeviceError::Serial {
                port: self.name.clone(),
                message: e.to_string(),
            })
    }

    fn bad_frames(&self) -> u64 {
        self.bad
    }
}

// ---------------------------------------------------------------------------------------------
// HID

/// Raw report I/O: implemented by `hidapi::HidDevice`, and by fakes in tests.
pub trait HidIo: Send {
    /// Reads one input report into `buf`; `Ok(0)` on timeout.
    fn read_report(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, DeviceError>;
    /// Writes one output report; `data[0]` is the report id (0: none).
    fn write_report(&mut self, data: &[u8]) -> Result<(), DeviceError>;
}

impl HidIo for hidapi::HidDevice {
    fn read_report(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, DeviceError> {
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        self.read_timeout(buf, ms)
            .map_err(|e| DeviceError::Hid(e.to_string()))
    }

    fn write_report(&mut self, data: &[u8]) -> Result<(), DeviceError> {
        self.write(data)
            .map(|_| ())
            .map_err(|e| DeviceError::Hid(e.to_string()))
    }
}

/// The office button's own firmware over vendor HID (32-byte reports, `brb_protocol::hid`).
pub struct HidTransport<T: HidIo> {
    io: T,
    name: String,
    bad: u64,
}

impl<T: HidIo> HidTransport<T> {
    pub fn new(io: T, name: String) -> Self {
        HidTransport { io, name, bad: 0 }
    }
}

impl<T: HidIo> Transport for HidTransport<T> {
    fn describe(&self) -> String {
        format!("HID {}", self.name)
    }

    fn recv(&mut self, timeout: Duration) -> Result<Vec<DeviceMsg>, DeviceError> {
        // One byte more than a report: a device that sends longer reports is not ours.
        let mut buf = [0u8; hid::REPORT_SIZE + 1];
        let n = self.io.read_report(&mut buf, timeout)?;
        if n == 0 {
            return Ok(Vec::new());
        }
        match hid::unpack(&buf[..n])
            .map_err(|e| e.to_string())
            .and_then(|m| DeviceMsg::decode(m).map_err(|e| e.to_string()))
        {
            Ok(m) => Ok(vec![m]),
            Err(e) => {
                self.bad += 1;
                tracing::debug!(device = %self.name, error = %e, "dropped a bad HID report");
                Ok(Vec::new())
            }
        }
    }

    fn send(&mut self, msg: HostMsg) -> Result<(), DeviceError> {
        let Some(report) = hid::pack(&msg.encode()) else {
            return Err(DeviceError::Hid("message does not fit a report".into()));
        };
        // Report id 0 (the device uses none), then the report.
        let mut data = [0u8; hid::REPORT_SIZE + 1];
        data[1..].copy_from_slice(&report);
        self.io.write_report(&data)
    }

    fn bad_frames(&self) -> u64 {
        self.bad
    }
}

// ---------------------------------------------------------------------------------------------
// Dream Cheeky "Big Red Button" (USB 1d34:000d): polled HID, no LED.

pub const DREAM_CHEEKY: (u16, u16) = (0x1d34, 0x000d);
/// How often the Dream Cheeky is polled.
pub const DREAM_CHEEKY_POLL: Duration = Duration::from_millis(20);

/// What one Dream Cheeky status byte means: `(pressed, lid_open)`.
///
/// UNTESTED ON HARDWARE. The known drivers disagree; this is the one place both readings
/// live. Exact values first (one driver: 0x15 lid closed, 0x16 pressed, 0x17 lid open), then
/// the bitwise reading of the other driver for any other byte (bit 0 clear: pressed; bit 4
/// set: lid open). A pressed button implies an open lid.
pub fn dream_cheeky_status(b: u8) -> (bool, bool) {
    const TABLE: [(u8, bool, bool); 3] = [
        (0x15, false, false),
        (0x16, true, true),
        (0x17, false, true),
    ];
    if let Some(&(_, pressed, lid)) = TABLE.iter().find(|(v, _, _)| *v == b) {
        return (pressed, lid);
    }
    let pressed = b & 0x01 == 0;
    (pressed, pressed || b & 0x10 != 0)
}

/// Turns the Dream Cheeky's polled status into protocol messages, so the daemon treats it like
/// any other button: the lid is the arming cover, presses get host-side sequence numbers and
/// hold times.
pub struct DreamCheeky<T: HidIo> {
    io: T,
    started: Instant,
    said_hello: bool,
    last: Option<(bool, bool)>,
    seq: u16,
    pressed_at: Option<Instant>,
    next_poll: Instant,
    last_heartbeat: Instant,
}

impl<T: HidIo> DreamCheeky<T> {
    pub fn new(io: T) -> Self {
        let now = Instant::now();
        DreamCheeky {
            io,
            started: now,
            said_hello: false,
            last: None,
            seq: 0,
            pressed_at: None,
            next_poll: now,
            last_heartbeat: now,
        }
    }
}

impl<T: HidIo> Transport for DreamCheeky<T> {
    fn describe(&self) -> String {
        "Dream Cheeky Big Red Button (HID 1d34:000d)".into()
    }

    fn recv(&mut self, timeout: Duration) -> Result<Vec<DeviceMsg>, DeviceError> {
        let mut out = Vec::new();
        if !self.said_hello {
            self.said_hello = true;
            out.push(DeviceMsg::Hello(Hello {
                protocol: PROTOCOL_VERSION,
                firmware: [0, 0, 0],
                capabilities: Capabilities(Capabilities::ARMING),
                serial: "DC-1d34-000d".into(),
            }));
        }
        let now = Instant::now();
        if now < self.next_poll {
            std::thread::sleep((self.next_poll - now).min(timeout));
            return Ok(out);
        }
        self.next_poll = now + DREAM_CHEEKY_POLL;
        // Ask for the status: an 8-byte output report ending in 0x02 (report id 0 first).
        self.io.write_report(&[0, 0, 0, 0, 0, 0, 0, 0, 2])?;
        let mut buf = [0u8; 8];
        let n = self.io.read_report(&mut buf, DREAM_CHEEKY_POLL)?;
        if n == 0 {
            return Ok(out);
        }
        let (pressed, lid_open) = dream_cheeky_status(buf[0]);
        let (was_pressed, was_open) = self.last.unwrap_or((pressed, lid_open));
        let first = self.last.is_none();
        self.last = Some((pressed, lid_open));
        if first {
            // Held at start is not a press, as with the firmware.
            if pressed {
                self.pressed_at = None;
            }
            return Ok(out);
        }
        if lid_open != was_open {
            out.push(DeviceMsg::Arming { armed: lid_open });
        }
        if pressed && !was_pressed {
            self.seq = self.seq.wrapping_add(1);
            self.pressed_at = Some(now);
            out.push(DeviceMsg::Press {
                seq: self.seq,
                armed: lid_open,
            });
        } else if !pressed
            && was_pressed
            && let Some(at) = self.pressed_at.take()
        {
            out.push(DeviceMsg::Release {
                seq: self.seq,
                hold_ms: u32::try_from(at.elapsed().as_millis()).unwrap_or(u32::MAX),
                armed: lid_open,
            });
        }
        if now.duration_since(self.last_heartbeat) >= Duration::from_secs(1) {
            // The device answers polls: say so the way firmware does, once a second.
            self.last_heartbeat = now;
            out.push(DeviceMsg::Heartbeat {
                uptime_ms: u32::try_from(self.started.elapsed().as_millis()).unwrap_or(u32::MAX),
                shown: brb_protocol::ShowState::Running,
                armed: lid_open,
            });
        }
        Ok(out)
    }

    fn send(&mut self, _msg: HostMsg) -> Result<(), DeviceError> {
        // No light to drive.
        Ok(())
    }

    fn bad_frames(&self) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use brb_protocol::ShowState;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    /// Report bytes in, report bytes out: what a HID device would do, recorded.
    #[derive(Clone, Default)]
    struct FakeHid {
        input: Arc<Mutex<VecDeque<Vec<u8>>>>,
        written: Arc<Mutex<Vec<Vec<u8>>>>,
        fail: Arc<Mutex<bool>>,
    }

    impl HidIo for FakeHid {
        fn read_report(&mut self, buf: &mut [u8], _t: Duration) -> Result<usize, DeviceError> {
            if *self.fail.lock().unwrap() {
                return Err(DeviceError::Hid("device disconnected".into()));
            }
            match self.input.lock().unwrap().pop_front() {
                Some(r) => {
                    let n = r.len().min(buf.len());
                    buf[..n].copy_from_slice(&r[..n]);
                    Ok(n)
                }
                None => Ok(0),
            }
        }

        fn write_report(&mut self, data: &[u8]) -> Result<(), DeviceError> {
            if *self.fail.lock().unwrap() {
                return Err(DeviceError::Hid("device disconnected".into()));
            }
            self.written.lock().unwrap().push(data.to_vec());
            Ok(())
        }
    }

    fn report(msg: &DeviceMsg) -> Vec<u8> {
        hid::pack(&msg.encode()).unwrap().to_vec()
    }

    #[test]
    fn hid_reports_become_messages_and_bad_ones_are_dropped() {
        let fake = FakeHid::default();
        let press = DeviceMsg::Press {
            seq: 3,
            armed: true,
        };
        {
            let mut q = fake.input.lock().unwrap();
            q.push_back(report(&press));
            q.push_back(vec![0xff; 32]); // length byte out of range
            q.push_back(vec![1, 0x42]); // short report
            let mut unknown = [0u8; 32];
            unknown[0] = 1;
            unknown[1] = 0x7f; // unknown type
            q.push_back(unknown.to_vec());
            q.push_back(vec![0u8; 40]); // longer than a report
        }
        let mut t = HidTransport::new(fake.clone(), "fake".into());
        let mut got = Vec::new();
        for _ in 0..6 {
            got.extend(t.recv(Duration::from_millis(1)).unwrap());
        }
        assert_eq!(got, vec![press]);
        assert_eq!(t.bad_frames(), 4);
    }

    #[test]
    fn hid_output_reports_have_a_zero_report_id_and_the_message() {
        let fake = FakeHid::default();
        let mut t = HidTransport::new(fake.clone(), "fake".into());
        t.send(HostMsg::Show(ShowState::Paused)).unwrap();
        let w = fake.written.lock().unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].len(), 33);
        assert_eq!(&w[0][..4], &[0, 2, 0x81, 1]);
        assert!(w[0][4..].iter().all(|&b| b == 0));
    }

    #[test]
    fn hid_link_errors_are_errors() {
        let fake = FakeHid::default();
        *fake.fail.lock().unwrap() = true;
        let mut t = HidTransport::new(fake, "fake".into());
        assert!(t.recv(Duration::from_millis(1)).is_err());
        assert!(t.send(HostMsg::Ping).is_err());
    }

    #[test]
    fn dream_cheeky_status_table() {
        assert_eq!(dream_cheeky_status(0x15), (false, false));
        assert_eq!(dream_cheeky_status(0x16), (true, true));
        assert_eq!(dream_cheeky_status(0x17), (false, true));
        // Other bytes: the bitwise reading.
        assert_eq!(dream_cheeky_status(0x00), (true, true));
        assert_eq!(dream_cheeky_status(0x01), (false, false));
        assert_eq!(dream_cheeky_status(0x11), (false, true));
    }

    fn status(b: u8) -> Vec<u8> {
        vec![b, 0, 0, 0, 0, 0, 0, 0]
    }

    #[test]
    fn dream_cheeky_polls_and_turns_status_into_events() {
        let fake = FakeHid::default();
        {
            let mut q = fake.input.lock().unwrap();
            for b in [0x15, 0x17, 0x16, 0x16, 0x17, 0x15] {
                q.push_back(status(b));
            }
        }
        let mut dc = DreamCheeky::new(fake.clone());
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        while !fake.input.lock().unwrap().is_empty() && Instant::now() < deadline {
            got.extend(dc.recv(Duration::from_millis(25)).unwrap());
        }
        let got: Vec<String> = got
            .iter()
            .filter(|m| !matches!(m, DeviceMsg::Heartbeat { .. }))
            .map(|m| {
                // Hold times depend on the poll timing; compare the rest.
                match m {
                    DeviceMsg::Release { seq, armed, .. } => {
                        format!("release seq={seq} armed={}", u8::from(*armed))
                    }
                    m => m.to_string(),
                }
            })
            .collect();
        assert_eq!(
            got,
            vec![
                "hello proto=1 fw=0.0.0 caps=0x02 serial=DC-1d34-000d",
                "arming armed=1",
                "press seq=1 armed=1",
                "release seq=1 armed=1",
                "arming armed=0",
            ]
        );
        // Every poll was the documented 8-byte output report ending in 0x02.
        let w = fake.written.lock().unwrap();
        assert!(w.len() >= 6);
        assert!(w.iter().all(|r| r == &[0, 0, 0, 0, 0, 0, 0, 0, 2]));
    }

    #[test]
    fn serial_decoding_survives_garbage() {
        let mut d = line::Decoder::new();
        let mut bad = 0;
        let mut bytes = b"\xff\x00junk$0201zz\n$02010001FFFF\n".to_vec();
        bytes.extend(line::encode(
            &DeviceMsg::Press {
                seq: 1,
                armed: true,
            }
            .encode(),
        ));
        // A valid frame of a host message, echoed back: not a device message.
        bytes.extend(line::encode(&HostMsg::Ping.encode()));
        let got = decode_bytes(&mut d, &bytes, &mut bad);
        assert_eq!(
            got,
            vec![DeviceMsg::Press {
                seq: 1,
                armed: true
            }]
        );
        assert_eq!(bad, 3);
    }
}
