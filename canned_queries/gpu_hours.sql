-- title: GPU-hours
-- description: GPU time held between :since and :until (UTC epoch seconds; default the last 24 h), grouped :by user (default), container or server, on the servers of host group :group (any source; empty = every server). A GPU allocated to a Slurm job with no process on it counts for the job's user (container: job <id>) from allocation on; once the job's processes run it counts through them, never twice. A GPU shared by k owners counts 1/k for each; a report counts until the host's next report, at most one interval, so offline gaps add nothing. gpu_hours, vram_gib_hours (GiB held × hours), avg_utilization_gpu (%, while held); first_hour/last_hour: the first and last hour with use (UTC epoch s, kept for scripts), first_hour_utc/last_hour_utc the same as ISO 8601 UTC. gpu_hours has decimals; rows by gpu_hours, most first, equal ones in natural order of owner (dgx-a2 < DGX-A3 < dgx-a10); the range is counted in hourly steps from the start of the hour holding :since, the current hour up to the last maintenance pass (about a minute).
with params as (
  select
    cast(coalesce(nullif(:since, ''), strftime('%s', 'now') - 86400) as integer) / 3600 * 3600 as since,
    cast(coalesce(nullif(:until, ''), strftime('%s', 'now')) as integer) as until,
    coalesce(nullif(:by, ''), 'user') as by
)
select
  case p.by
    when 'container' then nullif(u.container, '')
    when 'server' then coalesce(s.display_name, s.hostname)
    else nullif(u.user, '')
  end as owner,
  p.by as grouped_by,
  round(sum(u.gpu_seconds) / 3600.0, 3) as gpu_hours,
  round(sum(u.vram_mib_seconds) / 1024.0 / 3600.0, 3) as vram_gib_hours,
  round(sum(u.util_seconds) / nullif(sum(u.util_known_seconds), 0), 1) as avg_utilization_gpu,
  count(distinct u.gpu_id) as gpus,
  count(distinct u.server_id) as servers,
  min(u.hour) as first_hour,
  max(u.hour) as last_hour,
  strftime('%Y-%m-%dT%H:%M:%SZ', min(u.hour), 'unixepoch') as first_hour_utc,
  strftime('%Y-%m-%dT%H:%M:%SZ', max(u.hour), 'unixepoch') as last_hour_utc
from gpu_usage_1h u
join params p
join servers s on s.id = u.server_id
where u.hour >= p.since and u.hour < p.until
  and (:_scope_all or u.server_id in (select value from json_each(:_scope_servers)))
  and (coalesce(:group, '') = '' or u.server_id in (select server_id from server_groups where grp = :group))
  and :_scope_processes
group by 1, 2
order by gpu_hours desc, natural_key(owner), owner
