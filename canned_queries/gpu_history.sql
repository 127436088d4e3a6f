-- title: GPU history
-- description: Per-GPU metrics of one server over the last :hours hours (default 24, at most 17520), averaged into time buckets so that all GPUs together return at most 1000 rows (Datasette's row limit). Units as in the gpus query.
with params as (
  select
    cast(min(max(coalesce(cast(nullif(:hours, '') as real), 24), 0.1), 17520) * 3600 as integer) as span_s,
    max(1, (select count(*) from gpus where server_id = cast(:server_id as integer))) as gpu_count
),
range as (
  select
    cast(strftime('%s', 'now') as integer) - span_s as since,
    max(1, span_s * gpu_count / 990 + 1) as bucket_s
  from params
)
select
  g.id as gpu_id,
  g.gpu_index,
  (s.ts / r.bucket_s) * r.bucket_s as ts,
  r.bucket_s,
  count(*) as samples,
  round(avg(s.utilization_gpu), 1) as utilization_gpu,
  max(s.utilization_gpu) as utilization_gpu_max,
  round(avg(s.utilization_memory), 1) as utilization_memory,
  cast(avg(s.memory_used_mib) as integer) as memory_used_mib,
  max(s.memory_used_mib) as memory_used_mib_max,
  round(avg(s.temperature_gpu_c), 1) as temperature_gpu_c,
  max(s.temperature_gpu_c) as temperature_gpu_c_max,
  round(avg(s.power_draw_w), 1) as power_draw_w,
  max(s.power_draw_w) as power_draw_w_max
from gpus g
join gpu_samples s on s.gpu_id = g.id
join range r
where g.server_id = cast(:server_id as integer)
  and s.ts >= r.since
  and (:_scope_all or g.server_id in (select value from json_each(:_scope_servers)))
group by g.id, 3
order by g.gpu_index, 3
