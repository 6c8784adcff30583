/*
 * Test-only nginx module: `dump_tree <out-file> <conf-file>...;` (main context).
 *
 * For each conf file it runs nginx's own ngx_conf_parse()/ngx_conf_read_token() over the file
 * with a custom cf->handler that records every directive exactly as nginx tokenized it, and
 * writes the tree to <out-file>, one event per line:
 *
 *   file              a conf file starts (one per file, in order)
 *   d xHEX xHEX...    a directive ended by ";" (name first; every word hex-encoded, "x" prefix)
 *   b xHEX xHEX...    a directive ended by "{" (its block follows)
 *   e                 the "}" closing the innermost open block
 *   ok                the file ended cleanly
 *   err xHEX          nginx refused the file (hex of nginx's own error message)
 *   done              after the last file
 *
 * ngx_conf_parse() refuses "{" when cf->handler is set (it logs `unexpected "{"` and returns
 * an error with the block's name and arguments still in cf->args and the buffer just past
 * the "{"), so each block level is one call of ngx_conf_parse(cf, NULL) in parse_block mode:
 * on that `unexpected "{"` we record the block and recurse; a "}" ends the call with
 * NGX_CONF_OK; at the top level, `unexpected end of file, expecting "}"` is the file's end.
 * nginx's messages are captured through a log writer so they can be told apart.
 *
 * Never load this in a real server: it is for the testkit's tree oracle only.
 */

#include <ngx_config.h>
#include <ngx_core.h>

#include <stdio.h>
#include <string.h>

#define DUMP_CONF_BUFFER  4096   /* NGX_CONF_BUFFER in ngx_conf_file.c */
#define DUMP_MAX_DEPTH    100
#define DUMP_ERR_MAX      2048

typedef struct {
    FILE       *out;
    u_char      err[DUMP_ERR_MAX];
    size_t      err_len;
} ngx_dump_tree_ctx_t;

static char *ngx_dump_tree(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);

static ngx_command_t  ngx_dump_tree_commands[] = {
    { ngx_string("dump_tree"),
      NGX_MAIN_CONF|NGX_DIRECT_CONF|NGX_CONF_2MORE,
      ngx_dump_tree,
      0,
      0,
      NULL },
      ngx_null_command
};

static ngx_core_module_t  ngx_dump_tree_module_ctx = {
    ngx_string("dump_tree"),
    NULL,
    NULL
};

ngx_module_t  ngx_dump_tree_module = {
    NGX_MODULE_V1,
    &ngx_dump_tree_module_ctx,
    ngx_dump_tree_commands,
    NGX_CORE_MODULE,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NGX_MODULE_V1_PADDING
};


static void
dump_hex(FILE *out, u_char *p, size_t len)
{
    size_t  i;

    fputs(" x", out);
    for (i = 0; i < len; i++) {
        fprintf(out, "%02x", p[i]);
    }
}


static void
dump_words(ngx_dump_tree_ctx_t *ctx, const char *kind, ngx_array_t *args)
{
    ngx_str_t   *w = args->elts;
    ngx_uint_t   i;

    fputs(kind, ctx->out);
    for (i = 0; i < args->nelts; i++) {
        dump_hex(ctx->out, w[i].data, w[i].len);
    }
    fputc('\n', ctx->out);
}


static void
dump_err(ngx_dump_tree_ctx_t *ctx, const char *fallback)
{
    fputs("err", ctx->out);
    if (ctx->err_len) {
        dump_hex(ctx->out, ctx->err, ctx->err_len);
    } else {
        dump_hex(ctx->out, (u_char *) fallback, strlen(fallback));
    }
    fputc('\n', ctx->out);
}


static void
dump_log_writer(ngx_log_t *log, ngx_uint_t level, u_char *buf, size_t len)
{
    ngx_dump_tree_ctx_t  *ctx = log->wdata;

    /* keep the last message: ngx_conf_parse() logs one before returning an error */
    if (len > DUMP_ERR_MAX) {
        len = DUMP_ERR_MAX;
    }
    ngx_memcpy(ctx->err, buf, len);
    ctx->err_len = len;
}


static ngx_int_t
dump_err_is(ngx_dump_tree_ctx_t *ctx, const char *msg)
{
    size_t  n = strlen(msg), i;

    for (i = 0; i + n <= ctx->err_len; i++) {
        if (ngx_memcmp(ctx->err + i, msg, n) == 0) {
            return 1;
        }
    }
    return 0;
}


static char *
dump_directive(ngx_conf_t *cf, ngx_command_t *dummy, void *conf)
{
    dump_words(conf, "d", cf->args);
    return NGX_CONF_OK;
}


static ngx_int_t
dump_block(ngx_conf_t *cf, ngx_dump_tree_ctx_t *ctx, ngx_uint_t depth)
{
    char       *rv;
    ngx_buf_t  *b;

    for ( ;; ) {
        ctx->err_len = 0;
        rv = ngx_conf_parse(cf, NULL);
        b = cf->conf_file->buffer;

        if (rv == NGX_CONF_OK) {            /* "}" */
            if (depth == 0) {
                dump_err(ctx, "unexpected \"}\"");
                return NGX_ERROR;
            }
            fputs("e\n", ctx->out);
            return NGX_OK;
        }

        if (cf->args->nelts > 0 && b->pos > b->start && b->pos[-1] == '{'
            && dump_err_is(ctx, "unexpected \"{\" in "))
        {
            if (depth >= DUMP_MAX_DEPTH) {
                dump_err(ctx, "dump_tree: blocks nested too deeply");
                return NGX_ERROR;
            }
            dump_words(ctx, "b", cf->args);
            if (dump_block(cf, ctx, depth + 1) != NGX_OK) {
                return NGX_ERROR;
            }
            continue;
        }

        if (depth == 0
            && dump_err_is(ctx, "unexpected end of file, expecting \"}\" in "))
        {
            fputs("ok\n", ctx->out);
            return NGX_OK;
        }

        dump_err(ctx, "dump_tree: ngx_conf_parse failed");
        return NGX_ERROR;
    }
}


static void
dump_file(ngx_conf_t *cf, ngx_dump_tree_ctx_t *ctx, ngx_str_t *name)
{
    ngx_fd_t          fd;
    ngx_buf_t         buf;
    ngx_conf_file_t   conf_file, *prev;

    fputs("file\n", ctx->out);
    ctx->err_len = 0;

    fd = ngx_open_file(name->data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        dump_err(ctx, "dump_tree: cannot open the file");
        return;
    }

    ngx_memzero(&conf_file, sizeof(ngx_conf_file_t));
    ngx_memzero(&buf, sizeof(ngx_buf_t));

    if (ngx_fd_info(fd, &conf_file.file.info) == NGX_FILE_ERROR) {
        dump_err(ctx, "dump_tree: cannot stat the file");
        ngx_close_file(fd);
        return;
    }

    buf.start = ngx_alloc(DUMP_CONF_BUFFER, cf->log);
    if (buf.start == NULL) {
        dump_err(ctx, "dump_tree: out of memory");
        ngx_close_file(fd);
        return;
    }
    buf.pos = buf.start;
    buf.last = buf.start;
    buf.end = buf.start + DUMP_CONF_BUFFER;
    buf.temporary = 1;

    conf_file.buffer = &buf;
    conf_file.dump = NULL;
    conf_file.file.fd = fd;
    conf_file.file.name = *name;
    conf_file.file.offset = 0;
    conf_file.file.log = cf->log;
    conf_file.line = 1;

    prev = cf->conf_file;
    cf->conf_file = &conf_file;

    (void) dump_block(cf, ctx, 0);

    cf->conf_file = prev;
    ngx_free(buf.start);
    ngx_close_file(fd);
}


static char *
ngx_dump_tree(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_str_t             *value, *names;
    ngx_uint_t             i, n;
    ngx_log_t              log, *prev_log;
    ngx_dump_tree_ctx_t    ctx;
    ngx_conf_handler_pt    prev_handler;
    void                  *prev_handler_conf;

    value = cf->args->elts;
    n = cf->args->nelts;

    /* cf->args is reused by every ngx_conf_read_token() call: keep our own copy */
    names = ngx_palloc(cf->pool, n * sizeof(ngx_str_t));
    if (names == NULL) {
        return NGX_CONF_ERROR;
    }
    ngx_memcpy(names, value, n * sizeof(ngx_str_t));

    ngx_memzero(&ctx, sizeof(ctx));
    ctx.out = fopen((char *) names[1].data, "w");
    if (ctx.out == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "dump_tree: cannot open \"%V\"", &names[1]);
        return NGX_CONF_ERROR;
    }

    ngx_memzero(&log, sizeof(ngx_log_t));
    log.log_level = NGX_LOG_NOTICE;
    log.writer = dump_log_writer;
    log.wdata = &ctx;

    prev_log = cf->log;
    prev_handler = cf->handler;
    prev_handler_conf = cf->handler_conf;

    cf->log = &log;
    cf->handler = dump_directive;
    cf->handler_conf = &ctx;

    for (i = 2; i < n; i++) {
        dump_file(cf, &ctx, &names[i]);
    }

    cf->log = prev_log;
    cf->handler = prev_handler;
    cf->handler_conf = prev_handler_conf;

    fputs("done\n", ctx.out);
    if (fclose(ctx.out) != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "dump_tree: cannot write \"%V\"", &names[1]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}
