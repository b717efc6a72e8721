//! A minimal HTTP/1.1 keep-alive reader for the status-read benchmark, in the manner of `wrk`:
//! one precomputed request written per response read, no pipelining. A general client
//! (reqwest) costs several times the server's own work per request, and on a two-core machine
//! the client's CPU is taken from the server; the figure should measure the server.

/// Status and body length of a complete response head at the front of `buf`, and the head's
/// length; `Ok(None)` when the head is not complete yet.
pub fn parse_head(buf: &[u8]) -> Result<Option<(u16, usize, usize)>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > 64 * 1024 {
            return Err("response head longer than 64 KiB".into());
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut length = None;
    for l in lines {
        if let Some((name, value)) = l.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse::<usize>().ok();
        }
    }
    let length = length.ok_or("response without Content-Length")?;
    Ok(Some((status, length, end + 4)))
}

/// The request bytes for an authenticated keep-alive GET.
pub fn get_request(host: &str, path: &str, token: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n")
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_head_only_when_complete() {
        let r =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse_head(r).unwrap(), Some((200, 5, r.len() - 5)));
        for cut in 0..r.len() - 5 {
            assert_eq!(parse_head(&r[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
        let denied = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(parse_head(denied).unwrap(), Some((401, 0, denied.len())));
    }
}
