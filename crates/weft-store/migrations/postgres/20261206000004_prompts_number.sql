-- Queue numbers are read from this index (the next number is one more than the largest
-- magnitude), not by scanning every prompt ever run.
CREATE INDEX prompts_number ON prompts (number);
