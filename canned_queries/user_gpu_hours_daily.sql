-- title: A user's GPU-hours per day
-- description: GPU-hours of :user per UTC day over the last :days days (default 30, at most 366; today included) on the servers you may see, from the hourly accounting summed per day by maintenance (gpu_usage_user_1d; counted as /accounting counts them: a GPU shared by k owners counts 1/k each; a GPU allocated to their Slurm job with no process counts for them; today up to the last maintenance pass). idle_gpu_hours: the part of them during which the GPU's utilization.gpu was known and under features.idle_max_util (counted from the hub's upgrade to schema 27 on; earlier hours count 0). day is YYYY-MM-DD (UTC); gpus: GPUs held that day, counted per server and container; days without use are absent.
with params as (
  select (cast(strftime('%s', 'now') as integer) / 86400
          - min(max(cast(coalesce(nullif(:days, ''), 30) as integer), 1), 366) + 1) * 86400 as since
)
select
  strftime('%Y-%m-%d', u.day, 'unixepoch') as day,
  round(sum(u.gpu_seconds) / 3600.0, 3) as gpu_hours,
  round(sum(u.idle_seconds) / 3600.0, 3) as idle_gpu_hours,
  round(sum(u.vram_mib_seconds) / 1024.0 / 3600.0, 3) as vram_gib_hours,
  round(sum(u.util_seconds) / nullif(sum(u.util_known_seconds), 0), 1) as avg_utilization_gpu,
  sum(u.gpus) as gpus
from params p
-- cross join: the user's primary-key range drives the plan, whatever the statistics say
cross join gpu_usage_user_1d u on u.user = :user and u.day >= p.since
where (:_scope_all or u.server_id in (select value from json_each(:_scope_servers)))
  and :_scope_processes
group by u.day
order by u.day
