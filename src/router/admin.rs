//! CONFIG SET / REWRITE and DEBUG in a pool with `redis_admin_commands: true`: for an operator
//! who owns every server of the pool, they go to every shard (or to the shard of the keys they
//! name) instead of being refused. Without the key they are refused (see [`Route::Admin`]).

use super::{first_server, one_shard, redis_error, resp_frame, send_gather, send_one, GatherMerge, Slot, NO_SERVER};
use crate::metrics::Class;
use crate::protocol::redis::{self, DebugRoute, Fan, Route};
use crate::replies::Replies;
use crate::topology::Topology;
use crate::upstream::{Framing, Lane, Outbox};
use bytes::Bytes;
use smallvec::{smallvec, SmallVec};
use std::sync::Arc;

/// The refusal of an admin command in a pool without `redis_admin_commands`.
pub(super) fn refused(cmd: &redis::Command, why: &str) -> Slot {
    redis_error(format!(
        "unsupported command '{}': {why} (a pool whose operator runs every server may set redis_admin_commands: true)",
        super::display_name(cmd)
    ))
}

/// Route an admin command of a pool that allows them.
#[allow(clippy::too_many_arguments)]
pub(super) fn route(
    topo: &Topology,
    q: &Arc<Replies>,
    out: &mut Outbox,
    lane: Lane,
    frame: Bytes,
    req: &redis::Request,
    cmd: &redis::Command,
    resp3: bool,
) -> Slot {
    let argc = req.args.len();
    let arg = |i: usize| &frame[req.args[i].clone()];
    let how = if cmd.name == "debug" {
        match redis::debug_route(arg(1)) {
            Some(how) => how,
            None => {
                topo.stats.request(Class::Unsupported);
                return redis_error(format!(
                    "unsupported command 'DEBUG {}': legate sends only the DEBUG subcommands that inspect keys or set up the servers (see DEBUG HELP on a server)",
                    super::printable(arg(1)).to_ascii_uppercase()
                ));
            }
        }
    } else {
        DebugRoute::Every
    };
    let n = topo.servers.len();
    match how {
        DebugRoute::Keys(specs) => {
            let row = redis::Command {
                name: cmd.name,
                arity: cmd.arity,
                keys: redis::Keys::Specs(specs),
                route: Route::Keyed,
            };
            let mut keys: SmallVec<[usize; 4]> = SmallVec::new();
            let server = match redis::key_positions(&row, argc, arg, &mut keys) {
                // No key where one should be: the server answers its own error.
                Err(redis::BadKeys) => first_server(topo),
                Ok(()) => match one_shard(topo, &row, argc, &arg, &keys) {
                    Ok(s) => s,
                    Err(slot) => {
                        topo.stats.request(Class::Unsupported);
                        return slot;
                    }
                },
            };
            match server {
                Some(s) => send_one(topo, q, out, s, lane, smallvec![resp_frame(frame, req)], Framing::Redis),
                None => redis_error(NO_SERVER.into()),
            }
        }
        DebugRoute::AnyShard => match first_server(topo) {
            Some(s) => send_one(topo, q, out, s, lane, smallvec![resp_frame(frame, req)], Framing::Redis),
            None => redis_error(NO_SERVER.into()),
        },
        DebugRoute::OneServerOnly if n > 1 => {
            topo.stats.request(Class::Unsupported);
            redis_error(format!(
                "unsupported command 'DEBUG {}' on a pool of {n} servers: it answers for one server's whole dataset; ask each server directly",
                super::printable(arg(1)).to_ascii_uppercase()
            ))
        }
        DebugRoute::OneServerOnly | DebugRoute::Every => {
            if n == 0 {
                return redis_error(NO_SERVER.into());
            }
            if n == 1 {
                return send_one(topo, q, out, 0, lane, smallvec![resp_frame(frame, req)], Framing::Redis);
            }
            let bytes = resp_frame(frame, req);
            let requests = (0..n).map(|s| (s, bytes.clone())).collect();
            let merge = GatherMerge::RedisFan {
                fan: Fan::AllOk,
                resp3,
                clients: super::fanout::Clients::default(),
            };
            send_gather(topo, q, out, lane, requests, Framing::Redis, merge)
        }
    }
}
