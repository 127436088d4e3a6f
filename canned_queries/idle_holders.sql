-- title: Idle GPU holders
-- description: GPUs whose processes hold at least :min_mib MiB while utilization.gpu, utilization.encoder and utilization.decoder all stay under :max_util % for at least :hours hours (a GPU whose utilization.gpu is not reported — MIG, [N/A] — is never idle: unknown is not 0 %) (defaults from config: 1024 MiB, 5 %, 2 h; looked back at most 48 h in raw samples), with who holds them and since when (idle_since, UTC epoch s), and which holders the hub nudged about this idle run and when last (nudged, nudged_at; see docs/operations.md "Idle-GPU nudges").
with params as (
  select
    cast(coalesce(nullif(:min_mib, ''), :_config_idle_min_mib) as integer) as min_mib,
    cast(coalesce(nullif(:max_util, ''), :_config_idle_max_util) as real) as max_util,
    cast(coalesce(nullif(:hours, ''), :_config_idle_hours) as real) as hours,
    cast(strftime('%s', 'now') as integer) as now
),
candidates as (
  select g.id, g.server_id, g.gpu_index, g.name, g.uuid, g.memory_used_mib, g.utilization_gpu,
    coalesce(s.display_name, s.hostname) as server, s.last_ts
  from gpus g
  join server_state s on s.id = g.server_id
  join params p
  where s.state in ('online', 'error') and g.present and g.process_count > 0
    and g.memory_used_mib >= p.min_mib
    and g.utilization_gpu is not null
    and max(g.utilization_gpu, coalesce(g.utilization_encoder, 0), coalesce(g.utilization_decoder, 0)) < p.max_util
    and (:_scope_all or g.server_id in (select value from json_each(:_scope_servers)))
),
streaks as (
  select c.*,
    (select min(x.ts) from gpu_samples x
      where x.gpu_id = c.id
        and x.ts > coalesce(
          (select max(y.ts) from gpu_samples y
            where y.gpu_id = c.id and y.ts >= p.now - 172800
              and (y.utilization_gpu is null
                   or max(y.utilization_gpu, coalesce(y.utilization_encoder, 0),
                          coalesce(y.utilization_decoder, 0)) >= p.max_util
                   or coalesce(y.memory_used_mib, 0) < p.min_mib)),
          p.now - 172800)) as idle_since
  from candidates c join params p
)
select
  st.server_id,
  st.id as gpu_id,
  st.server,
  st.gpu_index,
  st.name,
  st.memory_used_mib as held_mib,
  st.utilization_gpu,
  st.idle_since,
  round((p.now - st.idle_since) / 3600.0, 1) as idle_hours,
  (select group_concat(distinct pr.user) from gpu_processes pr indexed by gpu_processes_server_ts
    where pr.server_id = st.server_id and pr.ts = st.last_ts and pr.gpu_id = st.id and :_scope_processes) as users,
  (select group_concat(distinct pr.container) from gpu_processes pr indexed by gpu_processes_server_ts
    where pr.server_id = st.server_id and pr.ts = st.last_ts and pr.gpu_id = st.id and :_scope_processes) as containers,
  (select group_concat(n.holder) from idle_nudges n
    where n.gpu_id = st.id and n.idle_since >= st.idle_since - 600 and :_scope_processes) as nudged,
  (select max(n.last_at) from idle_nudges n
    where n.gpu_id = st.id and n.idle_since >= st.idle_since - 600 and :_scope_processes) as nudged_at
from streaks st join params p
where st.idle_since is not null and p.now - st.idle_since >= p.hours * 3600
order by idle_hours desc, held_mib desc
