-- Lists that stay fast at a million experiments and ten million responses (docs/scale.md).
--
-- 1. An experiment's aggregates over its completed responses are kept on its row by a trigger on responses, so
--    a page sorted by quality reads an index instead of aggregating every response, and a page of 20 rows costs
--    20 index entries. Sums are numeric (exact under any order of additions and removals).
ALTER TABLE experiments
    ADD COLUMN generated     integer NOT NULL DEFAULT 0,
    ADD COLUMN cost_sum      numeric NOT NULL DEFAULT 0,
    ADD COLUMN duration_sum  bigint  NOT NULL DEFAULT 0,
    ADD COLUMN quality_sum   numeric NOT NULL DEFAULT 0,
    ADD COLUMN quality_n     integer NOT NULL DEFAULT 0,
    ADD COLUMN quality_score double precision
        GENERATED ALWAYS AS (CASE WHEN quality_n > 0 THEN (quality_sum / quality_n)::double precision END) STORED;

UPDATE experiments e
SET generated = a.generated, cost_sum = a.cost_sum, duration_sum = a.duration_sum,
    quality_sum = a.quality_sum, quality_n = a.quality_n
FROM (SELECT experiment_id, count(*) AS generated, coalesce(sum(cost::numeric), 0) AS cost_sum,
             coalesce(sum(response_time_ms), 0) AS duration_sum,
             coalesce(sum(overall_quality::numeric), 0) AS quality_sum, count(overall_quality) AS quality_n
      FROM responses WHERE status = 'completed' GROUP BY experiment_id) a
WHERE e.id = a.experiment_id;

-- search_path is pinned to this schema at creation, so the trigger updates this schema's experiments whatever
-- the writing session's search_path is.
CREATE FUNCTION experiments_response_rollup() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP <> 'INSERT' AND OLD.status = 'completed' THEN
        UPDATE experiments
        SET generated = generated - 1, cost_sum = cost_sum - OLD.cost::numeric,
            duration_sum = duration_sum - OLD.response_time_ms,
            quality_sum = quality_sum - coalesce(OLD.overall_quality::numeric, 0),
            quality_n = quality_n - (OLD.overall_quality IS NOT NULL)::integer
        WHERE id = OLD.experiment_id;
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.status = 'completed' THEN
        UPDATE experiments
        SET generated = generated + 1, cost_sum = cost_sum + NEW.cost::numeric,
            duration_sum = duration_sum + NEW.response_time_ms,
            quality_sum = quality_sum + coalesce(NEW.overall_quality::numeric, 0),
            quality_n = quality_n + (NEW.overall_quality IS NOT NULL)::integer
        WHERE id = NEW.experiment_id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER responses_rollup
    AFTER INSERT OR DELETE OR UPDATE OF experiment_id, status, cost, response_time_ms, overall_quality ON responses
    FOR EACH ROW EXECUTE FUNCTION experiments_response_rollup();

-- 2. One index per documented sort key, each carrying the equality filters (INCLUDE; owner_id for the research
--    view), so a page, however deep, is an index-only walk of its offset plus 20 row fetches. Quality can be null
--    and is listed NULLS LAST in both directions, hence two indexes; the other keys are NOT NULL and are scanned
--    backward for the other direction.
DROP INDEX experiments_created_at_idx;
CREATE INDEX experiments_created_at_idx ON experiments (created_at DESC, id DESC)
    INCLUDE (archived, status, type, model, favorited, owner_id);
CREATE INDEX experiments_updated_at_idx ON experiments (updated_at DESC, id DESC)
    INCLUDE (archived, status, type, model, favorited, owner_id);
CREATE INDEX experiments_name_idx ON experiments (lower(name), id)
    INCLUDE (archived, status, type, model, favorited, owner_id);
CREATE INDEX experiments_quality_desc_idx ON experiments (quality_score DESC NULLS LAST, id DESC)
    INCLUDE (archived, status, type, model, favorited, owner_id);
CREATE INDEX experiments_quality_asc_idx ON experiments (quality_score ASC NULLS LAST, id ASC)
    INCLUDE (archived, status, type, model, favorited, owner_id);
DROP INDEX experiments_status_idx;
DROP INDEX experiments_model_idx;
CREATE INDEX experiments_status_created_idx ON experiments (status, created_at DESC, id DESC) INCLUDE (archived);
CREATE INDEX experiments_model_created_idx ON experiments (model, created_at DESC, id DESC) INCLUDE (archived);

-- 3. Substring search (ILIKE '%term%') through trigram indexes. pg_trgm is database-wide: it lives in public,
--    where every service schema's search_path finds it; a concurrent creator (another schema migrating at the
--    same moment) is not an error.
DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public;
EXCEPTION WHEN unique_violation OR duplicate_object THEN
    NULL;
END
$$;
CREATE INDEX experiments_name_trgm_idx ON experiments USING gin (name public.gin_trgm_ops);
CREATE INDEX experiments_description_trgm_idx ON experiments USING gin (description public.gin_trgm_ops);
