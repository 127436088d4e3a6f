-- title: Host identity changes (admin)
-- description: What the hub noticed about host names (security review L10), newest first: renamed (the server's machine id reported another host name), name_taken (a second server reports a name another server has), look_alike (a name that looks like another server's: case, 0/o, 1/l/i, _/-, rn/m, vv/w). previous is the earlier name or the other server's name; other_server_id that server. Open (accepted_at null) ones are host_identity alerts until an admin accepts them. Times UTC epoch s.
-- admin: true
select e.id, e.server_id, coalesce(s.display_name, s.hostname) as server, e.kind, e.hostname, e.previous,
  e.other_server_id, e.ts, e.accepted_at, e.accepted_by
from host_identity_events e
join servers s on s.id = e.server_id
where e.accepted_at is null or e.ts >= cast(strftime('%s', 'now') as integer) - 30 * 86400
order by e.accepted_at is not null, e.id desc
limit 200
