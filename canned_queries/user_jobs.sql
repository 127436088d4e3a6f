-- title: A user's jobs and containers
-- description: The containers, Slurm jobs (container "job <id>") and bare-host work (container null) of :user over the last :days UTC days (default 30, at most 366; today included) on the servers you may see, newest first (at most 200), from the accounting summed per day by maintenance (gpu_usage_user_1d): server, gpu_hours, idle_gpu_hours (utilization.gpu known and under features.idle_max_util), avg_utilization_gpu (% while held), gpus (most GPUs held on one day), first_hour/last_hour (UTC epoch s of the first and last hour with use; the current hour counts up to the last maintenance pass).
with params as (
  select (cast(strftime('%s', 'now') as integer) / 86400
          - min(max(cast(coalesce(nullif(:days, ''), 30) as integer), 1), 366) + 1) * 86400 as since
)
select
  nullif(u.container, '') as container,
  u.server_id,
  coalesce(s.display_name, s.hostname) as server,
  round(sum(u.gpu_seconds) / 3600.0, 3) as gpu_hours,
  round(sum(u.idle_seconds) / 3600.0, 3) as idle_gpu_hours,
  round(sum(u.util_seconds) / nullif(sum(u.util_known_seconds), 0), 1) as avg_utilization_gpu,
  max(u.gpus) as gpus,
  min(u.first_hour) as first_hour,
  max(u.last_hour) as last_hour
from params p
-- cross join: the user's primary-key range drives the plan, whatever the statistics say
cross join gpu_usage_user_1d u on u.user = :user and u.day >= p.since
join servers s on s.id = u.server_id
where (:_scope_all or u.server_id in (select value from json_each(:_scope_servers)))
  and :_scope_processes
group by u.container, u.server_id
order by last_hour desc, gpu_hours desc
limit 200
