//! A RESP2/RESP3 reply read whole from a [`Client`], for tests that look inside replies.

use super::Client;

/// One reply. Maps are kept as flat arrays of key, value, key, value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Null,
    Array(Vec<Value>),
    /// Doubles, booleans, big numbers: their text.
    Other(String),
}

impl Value {
    /// The string of a simple, bulk or verbatim reply.
    pub fn text(&self) -> String {
        match self {
            Value::Simple(s) | Value::Error(s) | Value::Other(s) => s.clone(),
            Value::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
            Value::Int(n) => n.to_string(),
            other => panic!("not a string: {other:?}"),
        }
    }

    pub fn items(&self) -> &[Value] {
        match self {
            Value::Array(v) => v,
            other => panic!("not an array: {other:?}"),
        }
    }

    pub fn int(&self) -> i64 {
        match self {
            Value::Int(n) => *n,
            other => panic!("not an integer: {other:?}"),
        }
    }
}

impl Client {
    /// Read one whole reply.
    pub fn value(&mut self) -> Value {
        let line = self.line();
        let body = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
        let n = || body.parse::<i64>().unwrap();
        match line[0] {
            b'+' => Value::Simple(body),
            b'-' => Value::Error(body),
            b':' => Value::Int(n()),
            b'_' => Value::Null,
            b'$' | b'=' | b'!' if n() < 0 => Value::Null,
            b'$' | b'=' | b'!' => {
                let mut v = self.exact(n() as usize + 2);
                v.truncate(v.len() - 2);
                match line[0] {
                    b'=' => Value::Bulk(v[4..].to_vec()),
                    b'!' => Value::Error(String::from_utf8_lossy(&v).into_owned()),
                    _ => Value::Bulk(v),
                }
            }
            b'*' | b'~' | b'>' if n() < 0 => Value::Null,
            b'*' | b'~' | b'>' => Value::Array((0..n()).map(|_| self.value()).collect()),
            b'%' | b'|' => {
                let items = (0..2 * n()).map(|_| self.value()).collect();
                if line[0] == b'|' {
                    return self.value();
                }
                Value::Array(items)
            }
            _ => Value::Other(body),
        }
    }

    /// Send a command given as separate arguments and read its reply.
    pub fn call(&mut self, args: &[&[u8]]) -> Value {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend(format!("${}\r\n", a.len()).as_bytes());
            out.extend(*a);
            out.extend(b"\r\n");
        }
        self.send(&out);
        self.value()
    }

    /// Send a command of space-separated words and read its reply.
    pub fn words(&mut self, line: &str) -> Value {
        let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
        self.call(&args)
    }
}
