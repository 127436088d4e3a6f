-- title: A user's jobs and containers
-- description: The containers, Slurm jobs (container "job <id>") and bare-host work (container null) of :user over the last :days days (default 30, at most 366) on the servers you may see, newest first (at most 200), from the hourly accounting: server, gpu_hours, idle_gpu_hours (utilization.gpu known and under features.idle_max_util), avg_utilization_gpu (% while held), gpus (distinct GPUs), first_hour/last_hour (UTC epoch s of the first and last hour with use; the current hour counts up to the last maintenance pass).
with params as (
  select
    (cast(strftime('%s', 'now') as integer) - min(max(cast(coalesce(nullif(:days, ''), 30) as integer), 1), 366) * 86400)
      / 3600 * 3600 as since
)
select
  nullif(u.container, '') as container,
  u.server_id,
  coalesce(s.display_name, s.hostname) as server,
  round(sum(u.gpu_seconds) / 3600.0, 3) as gpu_hours,
  round(sum(u.idle_seconds) / 3600.0, 3) as idle_gpu_hours,
  round(sum(u.util_seconds) / nullif(sum(u.util_known_seconds), 0), 1) as avg_utilization_gpu,
  count(distinct u.gpu_id) as gpus,
  min(u.hour) as first_hour,
  max(u.hour) as last_hour
from params p
cross join gpu_usage_1h u indexed by gpu_usage_1h_user
join servers s on s.id = u.server_id
where u.user = :user and u.hour >= p.since
  and (:_scope_all or u.server_id in (select value from json_each(:_scope_servers)))
  and :_scope_processes
group by u.container, u.server_id
order by last_hour desc, gpu_hours desc
limit 200
