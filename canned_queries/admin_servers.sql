-- title: Servers, one page (admin)
-- description: For /admin's server list and its scope picker (issue 24 item 3): the servers whose shown name or host name contains :q (any case; empty: every server), in natural order of the shown name (servers.name_key: dgx-a9 before dgx-a10), :limit rows (1 to 10,000, default 50) from :offset (default 0). total is the number of matches. status as in servers (online, stale, offline, error, maintenance); admin_status and status_note as the admin set them.
-- admin: true
with params as (
  select lower(coalesce(:q, '')) as q,
    min(10000, max(1, cast(coalesce(nullif(:limit, ''), 50) as integer))) as page_size,
    max(0, cast(coalesce(nullif(:offset, ''), 0) as integer)) as page_start
)
select
  s.id as server_id,
  coalesce(s.display_name, s.hostname) as name,
  s.hostname,
  s.state as status,
  s.status as admin_status,
  s.status_note,
  s.gpu_count,
  s.last_seen,
  (select count(*) from servers c join params p
    where p.q = '' or instr(lower(coalesce(c.display_name, '') || ' ' || c.hostname), p.q) > 0) as total
from server_state s
cross join params p  -- s outermost, so a page walks servers_name_key in order (no sort)
where p.q = '' or instr(lower(coalesce(s.display_name, '') || ' ' || s.hostname), p.q) > 0
order by s.name_key, s.id
limit (select page_size from params) offset (select page_start from params)
