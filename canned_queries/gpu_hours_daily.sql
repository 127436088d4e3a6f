-- title: GPU-hours per day
-- description: GPU-hours per day and owner between :since and :until (UTC epoch seconds; default the last 7 days), grouped :by user (default), container or server, on the servers of host group :group (any source; empty = every server), for the per-day chart of /accounting. Days start at midnight in the viewer's time zone: :tz_offset_min is minutes east of UTC (default 0). day is YYYY-MM-DD; gpu_hours has decimals (a GPU shared by k owners counts 1/k each; a GPU allocated to a Slurm job with no process on it counts for the job's user, container job <id>). At most 366 days.
with params as (
  select
    cast(coalesce(nullif(:since, ''), strftime('%s', 'now') - 7 * 86400) as integer) / 3600 * 3600 as since,
    cast(coalesce(nullif(:until, ''), strftime('%s', 'now')) as integer) as until,
    coalesce(nullif(:by, ''), 'user') as by,
    cast(coalesce(nullif(:tz_offset_min, ''), 0) as integer) * 60 as offset_s
)
select
  strftime('%Y-%m-%d', u.hour + p.offset_s, 'unixepoch') as day,
  case p.by
    when 'container' then nullif(u.container, '')
    when 'server' then coalesce(s.display_name, s.hostname)
    else nullif(u.user, '')
  end as owner,
  round(sum(u.gpu_seconds) / 3600.0, 3) as gpu_hours
from gpu_usage_1h u
join params p
join servers s on s.id = u.server_id
where u.hour >= p.since and u.hour < min(p.until, p.since + 366 * 86400)
  and (:_scope_all or u.server_id in (select value from json_each(:_scope_servers)))
  and (coalesce(:group, '') = '' or u.server_id in (select server_id from server_groups where grp = :group))
  and :_scope_processes
group by 1, 2
order by 1, 3 desc, natural_key(owner), owner
