-- title: A user's GPUs now
-- description: The GPUs :user holds in each server's newest report (a process of theirs on it, or a Slurm job of theirs allocated to it with no process yet), on the servers you may see: server, GPU, the GPU's memory used/total (MiB) and utilization.gpu (%), held_mib (the memory their processes hold on it, MiB), their processes and containers/jobs (comma-separated), the Slurm job allocated to the GPU, shared_with (other holders' count), idle (1 when utilization.gpu is known and under :max_util %, default features.idle_max_util, and at least :min_mib MiB is held, default features.idle_min_mib; 0 otherwise; null when utilization.gpu is not reported). :user is matched exactly (the name as the agent reported it). Needs permission to see processes.
with params as (
  select
    cast(coalesce(nullif(:min_mib, ''), :_config_idle_min_mib) as integer) as min_mib,
    cast(coalesce(nullif(:max_util, ''), :_config_idle_max_util) as real) as max_util
),
held as (
  select s.id as server_id, coalesce(s.display_name, s.hostname) as server, s.last_ts, p.gpu_id,
    count(p.pid) as processes, sum(coalesce(p.used_gpu_memory_mib, 0)) as held_mib,
    group_concat(distinct p.container) as containers
  from servers s
  -- cross join + indexed by: servers drive the plan (one index search per server), whatever the statistics say
  cross join gpu_processes p indexed by gpu_processes_server_ts on p.server_id = s.id and p.ts = s.last_ts
  where p.user = :user and p.gpu_id is not null
    and (:_scope_all or s.id in (select value from json_each(:_scope_servers)))
    and :_scope_processes
  group by s.id, p.gpu_id
)
select
  h.server_id,
  h.server,
  g.gpu_index,
  g.name,
  g.uuid,
  g.memory_used_mib,
  g.memory_total_mib,
  g.utilization_gpu,
  h.held_mib,
  h.processes,
  h.containers,
  g.slurm_job,
  (select count(distinct coalesce(o.user, '') || char(31) || coalesce(o.container, '')) from gpu_processes o indexed by gpu_processes_server_ts
    where o.server_id = h.server_id and o.ts = h.last_ts and o.gpu_id = h.gpu_id
      and coalesce(o.user, '') <> :user) as shared_with,
  case
    when g.utilization_gpu is null then null
    when max(g.utilization_gpu, coalesce(g.utilization_encoder, 0), coalesce(g.utilization_decoder, 0)) < p.max_util
      and coalesce(g.memory_used_mib, 0) >= p.min_mib then 1
    else 0
  end as idle
from held h
join gpus g on g.id = h.gpu_id
join params p
order by natural_key(h.server), g.gpu_index
