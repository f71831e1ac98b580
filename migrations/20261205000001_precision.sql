-- Reduced-precision inference (bf16 / int8 on the CPU engine): the precision a deployment
-- runs in, and the quality guard's comparison with f32 on the job's validation split (JSON).
ALTER TABLE deployments ADD COLUMN precision TEXT NOT NULL DEFAULT 'f32';
ALTER TABLE deployments ADD COLUMN quality TEXT;
