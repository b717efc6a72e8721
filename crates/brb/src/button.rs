//! `brb button`: the office button daemon. Parses flags and hands over to `brb-button`.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use brb_button::{Config, DeviceSpec, PolicyConfig, find};
use clap::Args;

#[derive(Args)]
pub struct ButtonArgs {
    /// Our firmware over USB HID (Leonardo, Micro, Pro Micro).
    #[arg(long, conflicts_with_all = ["serial", "serial_usb", "dream_cheeky"])]
    hid: bool,
    /// Our firmware on this serial port (e.g. /dev/ttyACM0, COM3).
    #[arg(long, value_name = "PORT", conflicts_with_all = ["serial_usb", "dream_cheeky"])]
    serial: Option<String>,
    /// Our firmware on the first serial port with this USB id (VID:PID in hex, e.g. 1a86:7523).
    #[arg(long, value_name = "VID:PID", conflicts_with = "dream_cheeky")]
    serial_usb: Option<String>,
    /// A Dream Cheeky "Big Red Button" (USB 1d34:000d; untested on hardware).
    #[arg(long)]
    dream_cheeky: bool,
    /// With --hid: only this USB id (VID:PID in hex) instead of the known boards.
    #[arg(long, value_name = "VID:PID", requires = "hid")]
    hid_id: Option<String>,
    /// The switch the button pauses.
    #[arg(long, default_value = brb_api::PRIMARY_SWITCH)]
    switch: String,
    /// Hold this long (while paused) to resume, e.g. 2s or 3500ms.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    long_hold: Duration,
    /// The button never resumes (resume from the CLI or the app).
    #[arg(long)]
    no_resume: bool,
    /// Presses within this time of the previous one count as one.
    #[arg(long, default_value = "1500ms", value_parser = parse_duration)]
    cooldown: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected e.g. 2s or 500ms"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        _ => Err(format!("{s:?}: unit must be s or ms")),
    }
}

fn parse_id(s: &str) -> Result<(u16, u16)> {
    let (v, p) = s
        .split_once(':')
        .with_context(|| format!("{s:?}: expected VID:PID in hex"))?;
    let v = u16::from_str_radix(v, 16).with_context(|| format!("{s:?}: bad vendor id"))?;
    let p = u16::from_str_radix(p, 16).with_context(|| format!("{s:?}: bad product id"))?;
    Ok((v, p))
}

pub async fn run(client: brb_client::Client, args: ButtonArgs) -> Result<()> {
    super::server::init_tracing(brb_server::config::LogFormat::Human);
    let device = if let Some(port) = args.serial {
        DeviceSpec::Serial { port }
    } else if let Some(id) = args.serial_usb {
        DeviceSpec::SerialUsb {
            ids: vec![parse_id(&id)?],
        }
    } else if args.dream_cheeky {
        DeviceSpec::DreamCheeky
    } else if args.hid {
        DeviceSpec::Hid {
            ids: match args.hid_id {
                Some(id) => vec![parse_id(&id)?],
                None => find::HID_IDS.to_vec(),
            },
        }
    } else {
        DeviceSpec::Auto
    };
    if args.long_hold.is_zero() {
        bail!("--long-hold must be more than zero (use --no-resume to disable resuming)");
    }
    let cfg = Config {
        switch: args.switch,
        device,
        policy: PolicyConfig {
            long_hold: (!args.no_resume).then_some(args.long_hold),
            cooldown: args.cooldown,
        },
    };
    brb_button::run(client, cfg, super::server::shutdown_signal())
        .await
        .context("running the button daemon")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_ids() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("3500ms"), Ok(Duration::from_millis(3500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("2m").is_err());
        assert_eq!(parse_id("1a86:7523").unwrap(), (0x1a86, 0x7523));
        assert!(parse_id("zz").is_err());
    }
}
