-- title: GPU history
-- description: Per-GPU metrics of one server over the last :hours hours (default 24, at most 17520), in time buckets sized so that all GPUs together return at most 1000 rows (Datasette's row limit). Tier as in server_history: the coarsest whose resolution fits the bucket size. Units as in the gpus query; averages weighted by samples, *_max are maxima, *_min minima (PCIe link generation/width: the lowest in the bucket, so a downgraded link shows). The counters (ecc_errors_*_volatile_total, sw_power_cap_us, sw_thermal_slowdown_us, hw_thermal_slowdown_us: cumulative since driver load, µs for the throttle ones) are their highest value in the bucket; the growth from one bucket to the next is the errors / throttled time in between (a drop is a driver reload).
with params as (
  select
    cast(min(max(coalesce(cast(nullif(:hours, '') as real), 24), 0.1), 17520) * 3600 as integer) as span_s,
    cast(:server_id as integer) as server_id,
    max(1, (select count(*) from gpus where server_id = cast(:server_id as integer))) as gpu_count
),
range as (
  select
    server_id,
    cast(strftime('%s', 'now') as integer) - span_s as since,
    max(1, span_s * gpu_count / 990 + 1) as bucket_s,
    -- the coarsest tier whose resolution fits the bucket; raw only within 48 h
    case
      when max(1, span_s * gpu_count / 990 + 1) >= 3600 then '1h'
      when max(1, span_s * gpu_count / 990 + 1) >= 300 or span_s > 172800 then '5m'
      else 'raw'
    end as tier,
    coalesce((select value from maintenance_state where name = 'rolled_until'), 0) as rolled_until
  from params
  where (:_scope_all or server_id in (select value from json_each(:_scope_servers)))
),
src as (
  select s.gpu_id, s.ts, 1 as samples,
    s.utilization_gpu as util_avg, s.utilization_gpu as util_max, s.utilization_memory as mutil_avg,
    s.memory_used_mib as mem_avg, s.memory_used_mib as mem_max, s.temperature_gpu_c as temp_avg,
    s.temperature_gpu_c as temp_max, s.power_draw_w as power_avg, s.power_draw_w as power_max,
    s.utilization_encoder as enc_avg, s.utilization_encoder as enc_max, s.utilization_decoder as dec_avg,
    s.utilization_decoder as dec_max, s.pcie_link_gen_current as gen_min, s.pcie_link_gen_current as gen_max,
    s.pcie_link_width_current as width_min, s.pcie_link_width_current as width_max,
    s.ecc_errors_corrected_volatile_total as ecc_c, s.ecc_errors_uncorrected_volatile_total as ecc_u,
    s.sw_power_cap_us as pcap, s.sw_thermal_slowdown_us as sw_therm, s.hw_thermal_slowdown_us as hw_therm,
    s.temperature_gpu_tlimit_c as tlimit_avg, s.temperature_gpu_tlimit_c as tlimit_min
  -- cross joins: the server's GPUs drive the plan (primary-key range per GPU), whatever the statistics say
  from range r cross join gpus g on g.server_id = r.server_id cross join gpu_samples s on s.gpu_id = g.id
  where s.ts >= r.since and (r.tier = 'raw' or s.ts >= r.rolled_until)
  union all
  select t.gpu_id, t.ts, t.samples, t.utilization_gpu_avg, t.utilization_gpu_max, t.utilization_memory_avg,
    t.memory_used_mib_avg, t.memory_used_mib_max, t.temperature_gpu_c_avg, t.temperature_gpu_c_max,
    t.power_draw_w_avg, t.power_draw_w_max, t.utilization_encoder_avg, t.utilization_encoder_max,
    t.utilization_decoder_avg, t.utilization_decoder_max, t.pcie_link_gen_current_min, t.pcie_link_gen_current_max,
    t.pcie_link_width_current_min, t.pcie_link_width_current_max, t.ecc_errors_corrected_volatile_total_max,
    t.ecc_errors_uncorrected_volatile_total_max, t.sw_power_cap_us_max, t.sw_thermal_slowdown_us_max,
    t.hw_thermal_slowdown_us_max, t.temperature_gpu_tlimit_c_avg, t.temperature_gpu_tlimit_c_min
  from range r cross join gpus g on g.server_id = r.server_id cross join gpu_samples_5m t on t.gpu_id = g.id
  where r.tier = '5m' and t.ts >= r.since and t.ts < r.rolled_until
  union all
  select t.gpu_id, t.ts, t.samples, t.utilization_gpu_avg, t.utilization_gpu_max, t.utilization_memory_avg,
    t.memory_used_mib_avg, t.memory_used_mib_max, t.temperature_gpu_c_avg, t.temperature_gpu_c_max,
    t.power_draw_w_avg, t.power_draw_w_max, t.utilization_encoder_avg, t.utilization_encoder_max,
    t.utilization_decoder_avg, t.utilization_decoder_max, t.pcie_link_gen_current_min, t.pcie_link_gen_current_max,
    t.pcie_link_width_current_min, t.pcie_link_width_current_max, t.ecc_errors_corrected_volatile_total_max,
    t.ecc_errors_uncorrected_volatile_total_max, t.sw_power_cap_us_max, t.sw_thermal_slowdown_us_max,
    t.hw_thermal_slowdown_us_max, t.temperature_gpu_tlimit_c_avg, t.temperature_gpu_tlimit_c_min
  from range r cross join gpus g on g.server_id = r.server_id cross join gpu_samples_1h t on t.gpu_id = g.id
  where r.tier = '1h' and t.ts >= r.since and t.ts < r.rolled_until
)
select
  g.id as gpu_id,
  g.gpu_index,
  (s.ts / r.bucket_s) * r.bucket_s as ts,
  r.bucket_s,
  r.tier,
  sum(s.samples) as samples,
  round(sum(s.util_avg * s.samples) / nullif(sum(case when s.util_avg is not null then s.samples end), 0), 1) as utilization_gpu,
  max(s.util_max) as utilization_gpu_max,
  round(sum(s.mutil_avg * s.samples) / nullif(sum(case when s.mutil_avg is not null then s.samples end), 0), 1) as utilization_memory,
  cast(sum(s.mem_avg * s.samples) / nullif(sum(case when s.mem_avg is not null then s.samples end), 0) as integer) as memory_used_mib,
  cast(max(s.mem_max) as integer) as memory_used_mib_max,
  round(sum(s.temp_avg * s.samples) / nullif(sum(case when s.temp_avg is not null then s.samples end), 0), 1) as temperature_gpu_c,
  max(s.temp_max) as temperature_gpu_c_max,
  round(sum(s.power_avg * s.samples) / nullif(sum(case when s.power_avg is not null then s.samples end), 0), 1) as power_draw_w,
  max(s.power_max) as power_draw_w_max,
  round(sum(s.enc_avg * s.samples) / nullif(sum(case when s.enc_avg is not null then s.samples end), 0), 1) as utilization_encoder,
  max(s.enc_max) as utilization_encoder_max,
  round(sum(s.dec_avg * s.samples) / nullif(sum(case when s.dec_avg is not null then s.samples end), 0), 1) as utilization_decoder,
  max(s.dec_max) as utilization_decoder_max,
  cast(min(s.gen_min) as integer) as pcie_link_gen_min,
  cast(max(s.gen_max) as integer) as pcie_link_gen_max,
  cast(min(s.width_min) as integer) as pcie_link_width_min,
  cast(max(s.width_max) as integer) as pcie_link_width_max,
  cast(max(s.ecc_c) as integer) as ecc_errors_corrected_volatile_total,
  cast(max(s.ecc_u) as integer) as ecc_errors_uncorrected_volatile_total,
  cast(max(s.pcap) as integer) as sw_power_cap_us,
  cast(max(s.sw_therm) as integer) as sw_thermal_slowdown_us,
  cast(max(s.hw_therm) as integer) as hw_thermal_slowdown_us,
  round(sum(s.tlimit_avg * s.samples) / nullif(sum(case when s.tlimit_avg is not null then s.samples end), 0), 1) as temperature_gpu_tlimit_c,
  min(s.tlimit_min) as temperature_gpu_tlimit_c_min
from src s
join gpus g on g.id = s.gpu_id
join range r
group by g.id, 3
order by g.gpu_index, 3
