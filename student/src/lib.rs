//! Student stage: supervised fine-tuning (see the student issue; not built yet).
