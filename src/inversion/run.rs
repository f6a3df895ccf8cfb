//! `agd invert` as a library stage: DeepInversion of the task-1 model (docs/method.md §7). Batches
//! of `bs` targets are dreamed until every identity has `shots` images or `iters` batches
//! were made; the images go to `generation_dir` as `<pid>_b<batch>_<slot>.jpg` beside a
//! `log.txt`.
//!
//! Batch n (numbered on from the batches the folder already holds) draws its targets, its
//! starting noise and its flips from random streams keyed by (seed, n), and is saved whole
//! or not at all ([`Bags::save`]). A run killed at any point and resumed with the same
//! seed therefore dreams exactly the batches the uninterrupted run would have dreamed, and
//! never repeats one.

use super::plan::InvertPlan;
use super::shard::Shard;
use super::store::{batches_of, contact_sheet, other_format_in, recover, Bags, CONTACT_SHEET};
use super::{denormalize, DreamBatch, Inverter, Iteration};
use crate::bad_setting;
use crate::data::rng::{stream, tag};
use crate::error::{AboutExt, Error, Setting};
use crate::logging::{lock, Hold, Logger};
use crate::model::checkpoint::{resolve, Checkpoint};
use crate::model::ReidModel;
use crate::progress::Progress;
use crate::record::Recipe;
use crate::stage::open_log_as;
use anyhow::{Context, Result};
use std::ops::Range;
use std::path::Path;
use std::time::Instant;

/// Log every this many iterations (and each stage's last), as the reference prints every 10.
const LOG_EVERY: usize = 100;

/// The teacher: the model `teacher` holds, shaped by the checkpoint ([`ModelChoice`]).
///
/// [`ModelChoice`]: crate::model::ModelChoice
fn load_teacher(plan: &InvertPlan, device: tch::Device, log: &Logger) -> Result<ReidModel> {
    let path = resolve(&plan.teacher, Setting::Teacher)?;
    let ck = Checkpoint::load(&path)
        .context("not a checkpoint agd can read")
        .about_value(Setting::Teacher, path.display())?;
    let mut model = ReidModel::from_checkpoint(&ck, &plan.model, device).about(Setting::Teacher)?;
    model.compute = plan.device.compute.on(device);
    if let Some(line) = model.compute.describe() {
        log.line(line);
    }
    log.line(format!(
        "teacher {}: ResNet-{}, {} identities, epoch {}",
        path.display(),
        model.config.depth.number(),
        model.config.classes,
        ck.epoch
    ));
    Ok(model)
}

/// True when `a` and `b` name the same folder (`b` may not exist yet).
fn same_folder(a: &Path, b: &Path) -> bool {
    a == b
        || matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(a), Ok(b)) if a == b
        )
}

fn progress_text(p: &Iteration) -> String {
    let r = &p.report;
    format!(
        "loss {:.4}  CE {:.4}  BN {:.4}  prior {:.4}  acc {:.0}%",
        r.total,
        r.ce,
        r.bn,
        r.prior,
        100.0 * r.accuracy
    )
}

/// `agd invert`: dreams batches until every identity has `shots` images or `iters`
/// batches were made.
///
/// Under a launch of several ranks (`--nproc-per-node N`, torchrun), rank r dreams shard
/// r + 1 of N into the one folder, as `--shard` runs do: identities are independent, so
/// the ranks never wait for each other, and a killed rank is completed as its shard is.
pub fn run(args: &InvertPlan) -> Result<()> {
    let dealt = dealt(args)?;
    let args = dealt.as_ref().unwrap_or(args);
    args.validate()?;
    let (device, determinism) = args.device.select()?;
    // The teacher must exist before anything is created on disk.
    resolve(&args.teacher, Setting::Teacher)?;
    let dir = args.generation_dir();
    check_resume(args, &dir)?;
    let (journal, log, _shards) =
        claim(args, &dir).about_value(Setting::GenerationDir, dir.display())?;
    if let Some(note) = determinism {
        log.line(note);
    }
    let moved = recover(&dir, &journal).about_value(Setting::GenerationDir, dir.display())?;
    if moved > 0 {
        log.line(format!(
            "moved {moved} images of a batch a killed run had saved into {}",
            dir.display()
        ));
    }
    crate::alloc::retain_freed_memory();
    let seed = crate::stage::seed(args.seed, &log);
    let teacher = load_teacher(args, device, &log)?;
    let classes = teacher.config.classes;
    let ids = identities(args, classes)?;
    let mut bags = bags(args, &dir, classes, &ids, &log)?;
    log.line(format!(
        "dreaming {} images for {} identities short of {} shots, in batches of {} (at most {} batches), \
         {} + {} iterations each, on {}",
        bags.images_left(),
        bags.identities_left(),
        args.dreaming.shots,
        args.dreaming.bs,
        args.dreaming.iters,
        args.dreaming.stages.low_res_iters,
        args.dreaming.stages.full_res_iters,
        crate::device::describe(device)
    ));
    if let Some(s) = args.shard {
        log.line(format!(
            "shard {s}: identities {}..{} of {classes}; this shard's log and batch journal are in {}",
            ids.start,
            ids.end,
            journal.display()
        ));
    }
    let started = Instant::now();
    let folder = Folder {
        dir: &dir,
        journal: &journal,
        ids: &ids,
    };
    let (batches, written) = dream(args, &teacher, &folder, &mut bags, seed, &log)?;
    let elapsed = started.elapsed().as_secs_f64();
    if written > 0 || args.resume.is_some() {
        let sheet = contact_sheet(&dir, 8, args.dreaming.shots.min(10), 128, 64)?;
        let path = dir.join(CONTACT_SHEET);
        crate::io::create_dir(path.parent().expect("a subfolder"))?;
        crate::io::write_png(&path, &sheet)?;
        log.line(format!("contact sheet: {}", path.display()));
    }
    log.line(ending(args, &bags, &folder, batches, written, elapsed));
    log.succeeded();
    Ok(())
}

/// This rank's plan in a launch of several: its shard of the identities.
fn dealt(args: &InvertPlan) -> Result<Option<InvertPlan>> {
    let Some(world) = crate::dist::World::from_env()? else {
        return Ok(None);
    };
    if let Some(s) = args.shard {
        bad_setting!(
            Setting::Shard,
            s,
            "a launch of {n} ranks deals the shards itself (rank r dreams shard r + 1 of {n}): \
             leave --shard out",
            n = world.size
        );
    }
    Ok(Some(InvertPlan {
        shard: Shard::new(world.rank + 1, world.size),
        ..args.clone()
    }))
}

/// Claims the dreams folder `dir` for this run; returns the run's journal folder (where its
/// log, lock and batch journal are: `dir`, or the shard's subfolder), its log, and the
/// shared hold on `dir` of a shard.
///
/// One lock covers the folder whatever the sharding: an unsharded run holds it alone, and
/// the shards of one plan hold it together (each holding its own subfolder alone), so an
/// unsharded run and a shard never dream into one folder at once. The folder's record
/// ([`Recipe::claim`]) names its sharding plan, so a second plan (`--shard 1/3` in a
/// folder of `K/2`, or no `--shard`) is refused: shards of one plan dream disjoint
/// identities, and their images' names (`<pid>_b<batch>_<slot>`) never collide.
fn claim(
    args: &InvertPlan,
    dir: &Path,
) -> Result<(std::path::PathBuf, Logger, Option<std::fs::File>)> {
    let recipe = Recipe::of(args).sharded(args.shard.map(|s| s.count));
    let adopt = args.resume.is_some();
    let (journal, hold) = match args.shard {
        Some(s) => {
            crate::io::create_dir(dir)?;
            let hold = lock(dir, Hold::Shared)?;
            recipe.claim(dir, Setting::GenerationDir, adopt, Hold::Shared)?;
            (dir.join(s.folder_name()), Some(hold))
        }
        None => (dir.to_path_buf(), None),
    };
    let log = open_log_as(&journal, args, &recipe, adopt, true)?;
    Ok((journal, log, hold))
}

/// Completing a folder means writing into it: images dreamed elsewhere would leave it as
/// incomplete as it was, under a message saying it is complete.
fn check_resume(args: &InvertPlan, dir: &Path) -> Result<()> {
    let Some(from) = &args.resume else {
        return Ok(());
    };
    if !from.is_dir() {
        bad_setting!(Setting::InversionResume, from.display(), "no such folder");
    }
    if !same_folder(from, dir) {
        return Err(Error::bad_setting(
            Setting::GenerationDir,
            dir.display(),
            "a resumed run writes into the folder it completes: name the same folder, or leave the dreams folder out",
        ))
        .about_value(Setting::InversionResume, from.display());
    }
    Ok(())
}

/// The teacher's identities this run dreams: all of them, or its shard's.
fn identities(args: &InvertPlan, classes: i64) -> Result<Range<i64>> {
    Ok(match args.shard {
        Some(s) if s.count as i64 > classes => bad_setting!(
            Setting::Shard,
            s,
            "the teacher has {classes} identities: at most {classes} shards"
        ),
        Some(s) => s.identities(classes),
        None => 0..classes,
    })
}

/// The images each identity still needs: with `--resume`, counting what the folder holds
/// (in the same format); without, all of them (in a folder that holds none of them).
fn bags(
    args: &InvertPlan,
    dir: &Path,
    classes: i64,
    ids: &Range<i64>,
    log: &Logger,
) -> Result<Bags> {
    let shots = args.dreaming.shots;
    let format = args.dreaming.dream_format;
    let mut bags = Bags::of(classes, ids.clone(), shots);
    let Some(from) = &args.resume else {
        // A folder holding this run's identities' images is completed with --resume, or
        // not at all: dreaming afresh beside them would leave identities with twice the
        // images asked for (and in two formats), under a message that they have `shots`.
        let n = bags
            .clone()
            .count_existing(dir)
            .about_value(Setting::GenerationDir, dir.display())?;
        if n > 0 {
            return Err(Error::bad_setting(
                Setting::GenerationDir,
                dir.display(),
                format!(
                    "it already holds {n} dreamed images of {}: pass --resume {} to complete it, or dream into another folder",
                    match args.shard {
                        Some(s) => format!("shard {s}'s identities"),
                        None => "the teacher's identities".to_string(),
                    },
                    dir.display()
                ),
            )
            .into());
        }
        return Ok(bags);
    };
    if let Some((name, other)) =
        other_format_in(from, format).about_value(Setting::InversionResume, from.display())?
    {
        return Err(Error::bad_setting(
            Setting::DreamFormat,
            format,
            format!(
                "{} holds {name}, dreamed as {other}: complete it as {other}, or dream into a new folder",
                from.display()
            ),
        )
        .into());
    }
    let n = bags
        .count_to_complete(from)
        .about_value(Setting::InversionResume, from.display())?;
    log.line(format!(
        "resume: {n} images in {}; {} identities still short of {shots} images",
        from.display(),
        bags.identities_left(),
    ));
    Ok(bags)
}

/// Where a run writes: the dreams folder, its journal (the shard's own), and the
/// identities it dreams.
struct Folder<'a> {
    dir: &'a Path,
    journal: &'a Path,
    ids: &'a Range<i64>,
}

/// Dreams batches until the bags are full or `iters` batches were made; returns the
/// batches made and the images written.
fn dream(
    args: &InvertPlan,
    teacher: &ReidModel,
    folder: &Folder,
    bags: &mut Bags,
    seed: u64,
    log: &Logger,
) -> Result<(usize, usize)> {
    // Mixes the shard into every random stream, so shards' batch 1 differ.
    let key = |tag: u64, b: u64| match args.shard {
        Some(s) => vec![tag, b, s.index as u64, s.count as u64],
        None => vec![tag, b],
    };
    let inverter = Inverter::new(teacher, args.dreaming.coefficients);
    let stages = args.dreaming.stages;
    let per_batch = (stages.low_res_iters + stages.full_res_iters) as u64;
    // The folder's batches so far: this run's are numbered, and seeded, after them.
    let before = batches_of(folder.dir, folder.ids)
        .about_value(Setting::GenerationDir, folder.dir.display())?;
    let (mut batches, mut written) = (0, 0);
    while !bags.is_done() && batches < args.dreaming.iters {
        let b = before + batches as u64 + 1;
        let targets = bags.draw_targets(
            args.dreaming.bs,
            &mut stream(seed, &key(tag::INVERT_TARGETS, b)),
        );
        let mut batch = DreamBatch::seeded(
            &targets,
            args.size.height,
            args.size.width,
            teacher.device(),
            &mut stream(seed, &key(tag::INVERT_NOISE, b)),
        );
        let progress = Progress::new(log, per_batch, format!("batch {b}"));
        let t0 = Instant::now();
        let kept = inverter.dream(
            &mut batch,
            &stages,
            &mut stream(seed, &key(tag::INVERT_FLIPS, b)),
            |p| {
                progress.tick(format!("{} {}", p.stage.name(), progress_text(p)));
                if p.iteration % LOG_EVERY == 0 || p.iteration + 1 == p.stage_iters {
                    progress.line(format!(
                        "[batch {b}][{} {}/{}] lr {:.4}  {}",
                        p.stage.name(),
                        p.iteration + 1,
                        p.stage_iters,
                        p.lr,
                        progress_text(p)
                    ));
                }
            },
        )?;
        progress.finish();
        let accuracy = inverter.accuracy(&kept, &batch.targets);
        let best = batch.best().map_or(f64::NAN, |(l, _)| l);
        let paths = bags.save(
            folder.dir,
            folder.journal,
            b,
            &targets,
            &denormalize(&kept),
            args.dreaming.dream_format,
        )?;
        written += paths.len();
        batches += 1;
        log.line(format!(
            "batch {b}: kept loss {best:.4}, teacher accuracy {:.1}%, wrote {} images ({:.1} s); \
             {} images of {} identities to go",
            100.0 * accuracy,
            paths.len(),
            t0.elapsed().as_secs_f64(),
            bags.images_left(),
            bags.identities_left()
        ));
    }
    Ok((batches, written))
}

/// The run's last line: every identity done, or what is missing and how to complete it.
fn ending(
    args: &InvertPlan,
    bags: &Bags,
    folder: &Folder,
    batches: usize,
    written: usize,
    elapsed: f64,
) -> String {
    if bags.is_done() {
        format!(
            "done: {written} images written in {batches} {} ({elapsed:.1} s); every identity{} has {} images in {}",
            if batches == 1 { "batch" } else { "batches" },
            match args.shard {
                Some(s) => format!(" of shard {s} ({}..{})", folder.ids.start, folder.ids.end),
                None => String::new(),
            },
            args.dreaming.shots,
            folder.dir.display()
        )
    } else {
        format!(
            "stopped after --iters {} batches ({elapsed:.1} s, {written} images written): {} images of {} identities still missing; \
             run again with --resume {} to complete them",
            args.dreaming.iters,
            bags.images_left(),
            bags.identities_left(),
            folder.dir.display()
        )
    }
}
